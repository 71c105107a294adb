"""RealtimeService over a real grpc.aio server and a real Valkey."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration

from agentforge.realtime.v1 import message_pb2, request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2
from services.realtime.cursor import Position, decode_cursor, encode_cursor
from services.shared.bus import EventBus
from services.shared.valkey import EmbeddedValkey

from .conftest import Realtime, StartRealtime
from tests.auth import acting_as
from tests.support import violation_map as violations

Reason = message_pb2.HistoryLossReason


def data(**values: object) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def publish(rt: Realtime, topic: str, n: int, request_id: str = "") -> rr.PublishResponse:
    return await rt.stub.Publish(rr.PublishRequest(topic=topic, data=data(n=n), request_id=request_id))


async def publish_as_a_client_would(rt: Realtime, topic: str, n: int, request_id: str) -> rr.PublishResponse:
    """Right after a Redis restart the service's pooled connection is stale and Publish
    answers UNAVAILABLE (documented: retry idempotent calls); retry like a real client."""
    for attempt in range(3):
        try:
            return await publish(rt, topic, n, request_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


class Stream:
    """A Subscribe call read item by item."""

    def __init__(self, rt: Realtime, **request: object) -> None:
        self.call = rt.stub.Subscribe(rr.SubscribeRequest(**request))
        self._it: AsyncIterator[rr.SubscribeResponse] = self.call.__aiter__()

    async def next(self, timeout: float = 5.0) -> rr.SubscribeResponse:
        return await asyncio.wait_for(anext(self._it), timeout)

    async def next_kind(self, kind: str, timeout: float = 5.0) -> rr.SubscribeResponse:
        """Skip heartbeats until an item of ``kind`` arrives."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self.next(timeout)
                if item.WhichOneof("kind") == kind:
                    return item
                assert item.WhichOneof("kind") == "heartbeat", item

    async def messages(self, n: int) -> list[message_pb2.Message]:
        return [(await self.next_kind("message")).message for _ in range(n)]

    async def quiet(self, seconds: float) -> list[rr.SubscribeResponse]:
        """Everything but heartbeats that arrives within ``seconds``."""
        seen: list[rr.SubscribeResponse] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    item = await self.next(seconds + 1)
                    if item.WhichOneof("kind") != "heartbeat":
                        seen.append(item)
        return seen

    def cancel(self) -> None:
        self.call.cancel()


def restart_valkey(server: EmbeddedValkey) -> None:
    """Restart (losing all data) from the main thread: the server dies with the thread
    that started it (parent-death signal)."""
    server.stop()
    server.start()


# ------------------------------------------------------------------ publish/subscribe
async def test_subscribe_from_beginning_replays_in_order_with_cursors(realtime: Realtime) -> None:
    published = [await publish(realtime, "jobs/a", i) for i in range(5)]
    assert [p.sequence for p in published] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in published}) == 1

    stream = Stream(realtime, topics=["jobs/a"], from_beginning=True)
    first = await stream.next()
    assert first.WhichOneof("kind") == "heartbeat" and first.heartbeat.cursor
    messages = await stream.messages(5)
    assert [m.sequence for m in messages] == [1, 2, 3, 4, 5]
    assert [m.data["n"] for m in messages] == [0, 1, 2, 3, 4]
    assert all(m.topic == "jobs/a" and m.epoch == published[0].epoch for m in messages)
    assert all(m.publisher == "test-admin" and m.publish_time.seconds > 0 for m in messages)
    assert len({m.cursor for m in messages}) == 5
    # The subscription cursor of the last message points where Publish said it landed.
    assert decode_cursor(messages[-1].cursor)["jobs/a"] == decode_cursor(published[-1].cursor)["jobs/a"]
    stream.cancel()


async def test_live_subscription_sees_only_new_messages(realtime: Realtime) -> None:
    await publish(realtime, "live", 1)
    stream = Stream(realtime, topics=["live"])
    await stream.next_kind("heartbeat")
    await publish(realtime, "live", 2)
    [message] = await stream.messages(1)
    assert (message.sequence, message.data["n"]) == (2, 2)
    stream.cancel()


async def test_resume_with_last_cursor_gets_exactly_the_rest(realtime: Realtime) -> None:
    for i in range(4):
        await publish(realtime, "resume/a", i)
        await publish(realtime, "resume/b", i)
    stream = Stream(realtime, topics=["resume/a", "resume/b"], from_beginning=True)
    got = await stream.messages(5)
    stream.cancel()
    for i in range(4, 7):
        await publish(realtime, "resume/a", i)
        await publish(realtime, "resume/b", i)

    resumed = Stream(realtime, topics=["resume/a", "resume/b"], cursor=got[-1].cursor)
    rest = await resumed.messages(14 - 5)
    seen = {(m.topic, m.sequence) for m in got + rest}
    assert len(got + rest) == len(seen) == 14  # no duplicates
    assert seen == {(t, s) for t in ("resume/a", "resume/b") for s in range(1, 8)}  # no gaps
    for topic in ("resume/a", "resume/b"):
        sequences = [m.sequence for m in got + rest if m.topic == topic]
        assert sequences == sorted(sequences)
    assert await resumed.quiet(0.5) == []
    resumed.cancel()


async def test_heartbeat_cursor_resumes_without_loss(realtime: Realtime) -> None:
    stream = Stream(realtime, topics=["hb/cursor"], heartbeat_interval=Duration(seconds=1))
    beat = await stream.next()
    stream.cancel()
    await publish(realtime, "hb/cursor", 1)
    resumed = Stream(realtime, topics=["hb/cursor"], cursor=beat.heartbeat.cursor)
    [message] = await resumed.messages(1)
    assert message.sequence == 1
    resumed.cancel()


async def test_pattern_subscription_receives_topic_created_later(realtime: Realtime) -> None:
    with acting_as("service"):  # trainingJobs/* is written by the services only
        await publish(realtime, "trainingJobs/old", 1)
    await publish(realtime, "other/x", 1)
    stream = Stream(realtime, topic_patterns=["trainingJobs/*"])
    await stream.next_kind("heartbeat")
    with acting_as("service"):
        await publish(realtime, "trainingJobs/new", 7)
    await publish(realtime, "other/y", 1)
    [message] = await stream.messages(1)
    assert (message.topic, message.sequence, message.data["n"]) == ("trainingJobs/new", 1, 7)
    with acting_as("service"):
        await publish(realtime, "trainingJobs/old", 2)
    [message] = await stream.messages(1)
    assert (message.topic, message.sequence) == ("trainingJobs/old", 2)
    assert await stream.quiet(0.4) == []
    stream.cancel()


async def test_pattern_subscriptions_learn_of_new_topics_without_scanning_the_registry(
        valkey: EmbeddedValkey, start_realtime: StartRealtime) -> None:
    # No periodic rescan in this test (an hour): a topic created later reaches the pattern
    # subscriptions through the store's topics.created announcements, and idle pattern
    # subscriptions send no registry scans (ZRANGEBYLEX) to Redis at all.
    rt = await start_realtime(valkey.url, rescan_interval_s=3600.0)
    streams = [Stream(rt, topic_patterns=["built/*"]) for _ in range(20)]
    for stream in streams:
        await stream.next_kind("heartbeat")
    await asyncio.sleep(0.5)  # each ran its one rescan right after registering

    async def scans() -> int:
        stats = await rt.server.store.redis.info("commandstats")
        return int(stats.get("cmdstat_zrangebylex", {}).get("calls", 0))

    before = await scans()
    await asyncio.sleep(1.5)
    assert await scans() == before, "idle pattern subscriptions scanned the registry"
    await publish(rt, "built/new", 3)
    for stream in streams:
        [message] = await stream.messages(1)
        assert (message.topic, message.sequence, message.data["n"]) == ("built/new", 1, 3)
    await publish(rt, "unrelated/x", 1)
    await publish(rt, "built/new", 4)
    for stream in streams:
        [message] = await stream.messages(1)
        assert (message.topic, message.sequence) == ("built/new", 2)
        stream.cancel()


async def test_first_heartbeat_is_immediate_then_per_interval(realtime: Realtime) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = Stream(realtime, topics=["quiet"], heartbeat_interval=Duration(seconds=1))
    first = await stream.next(timeout=2)
    assert first.WhichOneof("kind") == "heartbeat"
    assert loop.time() - start < 0.9
    second = await stream.next(timeout=3)
    assert second.WhichOneof("kind") == "heartbeat"
    assert 0.8 < loop.time() - start < 2.5
    assert second.heartbeat.cursor == first.heartbeat.cursor
    stream.cancel()


# ------------------------------------------------------------------ history loss
async def test_store_restart_reports_history_lost_with_new_epoch(
    valkey_factory: object, start_realtime: StartRealtime
) -> None:
    server: EmbeddedValkey = valkey_factory()  # type: ignore[operator]
    rt = await start_realtime(server.url)
    before = await publish(rt, "restart", 1)
    stream = Stream(rt, topics=["restart"], from_beginning=True)
    [old] = await stream.messages(1)
    restart_valkey(server)
    lost = (await stream.next_kind("history_lost")).history_lost
    assert lost.topic == "restart"
    assert lost.reason == Reason.HISTORY_LOSS_REASON_EPOCH_CHANGED
    assert lost.previous_epoch == old.epoch == before.epoch
    assert lost.epoch and lost.epoch != before.epoch
    after = await publish_as_a_client_would(rt, "restart", 2, request_id="after-restart")
    [new] = await stream.messages(1)
    assert (new.epoch, new.sequence, new.data["n"]) == (lost.epoch, 1, 2) == (after.epoch, after.sequence, 2)
    stream.cancel()

    # A client resuming with a pre-restart cursor is told as well.
    resumed = Stream(rt, topics=["restart"], cursor=old.cursor)
    lost_again = (await resumed.next_kind("history_lost")).history_lost
    assert (lost_again.previous_epoch, lost_again.epoch) == (before.epoch, after.epoch)
    assert lost_again.resume_sequence == 1
    [replayed] = await resumed.messages(1)
    assert (replayed.sequence, replayed.epoch) == (1, after.epoch)
    resumed.cancel()


async def test_trimmed_cursor_reports_retention_exceeded(
    valkey: EmbeddedValkey, start_realtime: StartRealtime
) -> None:
    rt = await start_realtime(valkey.url, topic_maxlen=10)
    first = await publish(rt, "trimmed", 0)
    for i in range(1, 400):
        await publish(rt, "trimmed", i)
    info = await rt.stub.GetTopic(rr.GetTopicRequest(name="topics/trimmed"))
    assert info.message_count == 400 and info.first_retained_sequence > 2
    stream = Stream(rt, topics=["trimmed"], cursor=first.cursor)
    lost = (await stream.next_kind("history_lost")).history_lost
    assert lost.reason == Reason.HISTORY_LOSS_REASON_RETENTION_EXCEEDED
    assert lost.resume_sequence == info.first_retained_sequence
    [message] = await stream.messages(1)
    assert message.sequence == info.first_retained_sequence
    stream.cancel()


async def test_cursor_beyond_newest_message_is_unknown(realtime: Realtime) -> None:
    published = await publish(realtime, "unknown", 1)
    position = decode_cursor(published.cursor)["unknown"]
    forged = encode_cursor({"unknown": Position(position.epoch, "99999999999999-0", 50)})
    stream = Stream(realtime, topics=["unknown"], cursor=forged)
    lost = (await stream.next_kind("history_lost")).history_lost
    assert lost.reason == Reason.HISTORY_LOSS_REASON_UNKNOWN_CURSOR
    [message] = await stream.messages(1)
    assert message.sequence == 1
    stream.cancel()


# ------------------------------------------------------------------ publish semantics
async def test_publish_with_request_id_is_idempotent(realtime: Realtime) -> None:
    first = await publish(realtime, "idem", 1, request_id="req-1")
    again = await publish(realtime, "idem", 1, request_id="req-1")
    assert again == first
    # Another message under a used request_id is a client bug, not a retry (issue 8).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await publish(realtime, "idem", 2, request_id="req-1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    other = await publish(realtime, "idem", 3, request_id="req-2")
    assert other.sequence == 2
    topic = await realtime.stub.GetTopic(rr.GetTopicRequest(name="topics/idem"))
    assert topic.message_count == 2


async def test_bridge_republishes_bus_events_as_any(realtime: Realtime, stream_prefix: str) -> None:
    event = training_job_event_pb2.TrainingJobEvent(training_job="trainingJobs/j1", sequence=3)
    async with EventBus(realtime.config.bus) as bus:
        await bus.publish(stream_prefix + "events.training", event, subject="trainingJobs/j1")
    stream = Stream(realtime, topics=["trainingJobs/j1"], from_beginning=True)
    [message] = await stream.messages(1)
    assert message.payload.Is(training_job_event_pb2.TrainingJobEvent.DESCRIPTOR)
    unpacked = training_job_event_pb2.TrainingJobEvent()
    message.payload.Unpack(unpacked)
    assert unpacked == event
    stream.cancel()


# ------------------------------------------------------------------ topics
async def test_get_topic_reports_counts_and_subscribers(realtime: Realtime) -> None:
    await publish(realtime, "counted/t", 1)
    await publish(realtime, "counted/t", 2)
    stream = Stream(realtime, topic_patterns=["counted/*"])
    await stream.next_kind("heartbeat")
    async with asyncio.timeout(5):
        while True:
            topic = await realtime.stub.GetTopic(rr.GetTopicRequest(name="topics/counted/t"))
            if topic.subscriber_count == 1:
                break
            await asyncio.sleep(0.05)
    assert (topic.name, topic.topic, topic.message_count, topic.retained_count) == (
        "topics/counted/t", "counted/t", 2, 2)
    assert topic.first_retained_sequence == 1 and topic.epoch
    assert topic.last_publish_time.seconds > 0 and topic.create_time.seconds > 0
    stream.cancel()
    async with asyncio.timeout(5):
        while (await realtime.stub.GetTopic(rr.GetTopicRequest(name="topics/counted/t"))).subscriber_count:
            await asyncio.sleep(0.05)


async def test_get_topic_unknown_is_not_found(realtime: Realtime) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await realtime.stub.GetTopic(rr.GetTopicRequest(name="topics/never/used"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_subscribing_creates_the_topic(realtime: Realtime) -> None:
    stream = Stream(realtime, topics=["made/by-subscribe"])
    await stream.next_kind("heartbeat")
    topic = await realtime.stub.GetTopic(rr.GetTopicRequest(name="topics/made/by-subscribe"))
    assert topic.message_count == 0
    stream.cancel()


async def test_list_topics_pages_in_order_with_pattern(realtime: Realtime) -> None:
    names = [f"list/t{i:02d}" for i in range(7)] + ["listed", "zzz/other"]
    for name in reversed(names):
        await publish(realtime, name, 1)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await realtime.stub.ListTopics(rr.ListTopicsRequest(page_size=3, page_token=token,
                                                                   topic_pattern="list/*"))
        seen += [t.topic for t in page.topics]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == names[:7] and pages == 3
    everything = await realtime.stub.ListTopics(rr.ListTopicsRequest(page_size=1000))
    topics = [t.topic for t in everything.topics]
    assert topics == sorted(topics) and set(names) <= set(topics)
    assert everything.next_page_token == ""
    assert all(t.message_count == 1 for t in everything.topics if t.topic in names)


# ------------------------------------------------------------------ bad input
async def test_malformed_cursor_is_invalid_argument(realtime: Realtime) -> None:
    for cursor in ("garbage!", "1AAAA", "2" + "x" * 10):
        stream = Stream(realtime, topics=["t"], cursor=cursor)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.next()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cursor" in violations(err.value)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (rr.SubscribeRequest(), ""),  # a message-level rule: the request as a whole
        (rr.SubscribeRequest(topics=["bad topic"]), "topics[0]"),
        (rr.SubscribeRequest(topic_patterns=["a/**/b"]), "topic_patterns[0]"),
        (rr.SubscribeRequest(topics=["t"], heartbeat_interval=Duration(seconds=0)), "heartbeat_interval"),
    ],
)
async def test_bad_subscribe_is_invalid_argument(realtime: Realtime, request_: rr.SubscribeRequest, field: str) -> None:
    call = realtime.stub.Subscribe(request_)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(anext(call.__aiter__()), 5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)


async def test_bad_publish_is_invalid_argument(realtime: Realtime) -> None:
    cases = [
        (rr.PublishRequest(topic="a/*", data=data(x=1)), "topic"),
        (rr.PublishRequest(topic="", data=data(x=1)), "topic"),
        (rr.PublishRequest(topic="ok"), "content"),
        (rr.PublishRequest(topic="ok", data=data(blob="x" * (1024 * 1024 + 10))), "data"),
        (rr.PublishRequest(topic="ok", data=data(x=1), request_id="bad id!"), "request_id"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await realtime.stub.Publish(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request.topic
        assert field in violations(err.value), (field, violations(err.value))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await realtime.stub.GetTopic(rr.GetTopicRequest(name="topics/ok"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was published


async def test_bad_topic_queries_are_invalid_argument(realtime: Realtime) -> None:
    cases = [
        (realtime.stub.GetTopic(rr.GetTopicRequest(name="nottopics/x")), "name"),
        (realtime.stub.ListTopics(rr.ListTopicsRequest(page_size=5000)), "page_size"),
        (realtime.stub.ListTopics(rr.ListTopicsRequest(page_token="@@@")), "page_token"),
        (realtime.stub.ListTopics(rr.ListTopicsRequest(topic_pattern="x y")), "topic_pattern"),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(err.value)
    await publish(realtime, "tok/a", 1)
    await publish(realtime, "tok/b", 1)
    page = await realtime.stub.ListTopics(rr.ListTopicsRequest(page_size=1, topic_pattern="tok/*"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await realtime.stub.ListTopics(rr.ListTopicsRequest(page_token=page.next_page_token, topic_pattern="x/*"))
    assert "page_token" in violations(err.value)


# ------------------------------------------------------------------ how streams end
async def test_shutdown_ends_subscription_with_unavailable(realtime: Realtime) -> None:
    stream = Stream(realtime, topics=["bye"])
    await stream.next_kind("heartbeat")
    stopping = asyncio.create_task(realtime.server.stop(2.0))
    end = await stream.next_kind("stream_end")
    assert end.stream_end.code == grpc.StatusCode.UNAVAILABLE.value[0]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.next()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await stopping


async def test_slow_consumer_is_ended_with_resource_exhausted(
    valkey: EmbeddedValkey, start_realtime: StartRealtime
) -> None:
    rt = await start_realtime(valkey.url, queue_size=4)
    stream = Stream(rt, topics=["slow"])
    await stream.next_kind("heartbeat")
    blob = "x" * 200_000
    for i in range(60):  # ~12 MB: more than HTTP/2 flow control buffers
        await rt.stub.Publish(rr.PublishRequest(topic="slow", data=data(i=i, blob=blob)))
    await asyncio.sleep(0.5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(20):
            while True:
                await stream.next()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ------------------------------------------------------------------ one fan-out
async def test_300_subscribers_share_a_bounded_number_of_redis_connections(
    valkey_factory: object, start_realtime: StartRealtime
) -> None:
    """The issue's example: ~110 subscribers used to exhaust the connection pool and
    Publish failed while they were open. Now every stream gets every message and the
    service's Redis connections stay bounded, whatever the number of subscribers."""
    from redis.asyncio import Redis

    server: EmbeddedValkey = valkey_factory()  # type: ignore[operator]
    rt = await start_realtime(server.url)
    streams = [Stream(rt, topics=[f"fan/{i % 3}"]) for i in range(300)]
    await asyncio.gather(*(s.next_kind("heartbeat", timeout=30) for s in streams))
    published = await asyncio.gather(*(publish(rt, f"fan/{i % 3}", i) for i in range(30)))
    assert len(published) == 30
    expected = {t: sorted(p.sequence for p in published if p.topic == t) for t in ("fan/0", "fan/1", "fan/2")}
    for i, stream in enumerate(streams):
        got = await stream.messages(10)
        assert [m.sequence for m in got] == expected[f"fan/{i % 3}"]
    async with Redis.from_url(server.url) as probe:
        clients = int((await probe.info("clients"))["connected_clients"]) - 1
    config = rt.config
    bound = config.fanout_readers + config.watch_connections + config.bus.max_connections
    assert clients <= bound and clients < 60, clients
    for stream in streams:
        stream.cancel()


async def test_a_slow_subscriber_never_stalls_the_others(
    valkey: EmbeddedValkey, start_realtime: StartRealtime
) -> None:
    rt = await start_realtime(valkey.url, queue_size=4)
    slow = Stream(rt, topics=["stall"])
    fast = Stream(rt, topics=["stall"])
    await slow.next_kind("heartbeat")
    await fast.next_kind("heartbeat")
    blob = "x" * 200_000
    received = 0
    for i in range(40):
        await rt.stub.Publish(rr.PublishRequest(topic="stall", data=data(i=i, blob=blob)))
        [message] = await fast.messages(1)
        assert message.data["i"] == i
        received += 1
    assert received == 40
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(20):
            while True:
                await slow.next()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    fast.cancel()
