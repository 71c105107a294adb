"""EventBus against a real Valkey: publish, replay, follow, groups, DLQ, epochs, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from google.protobuf.struct_pb2 import Struct
from google.rpc.status_pb2 import Status

from services.shared.bus import (
    Backoff,
    BusConfig,
    BusUnavailable,
    Cursor,
    Deduplicator,
    Envelope,
    EpochChanged,
    EventBus,
    Item,
    TypeMismatch,
    dlq_stream,
)
from services.shared.valkey import EmbeddedValkey

ROOT = Path(__file__).resolve().parents[2]
FAST_BACKOFF = Backoff(initial_s=0.02, max_s=0.2)


def make_config(url: str, **overrides: object) -> BusConfig:
    values: dict[str, object] = {"url": url, "block_ms": 100, "backoff": FAST_BACKOFF}
    values.update(overrides)
    return BusConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def bus(valkey: EmbeddedValkey) -> AsyncIterator[EventBus]:
    async with EventBus(make_config(valkey.url, claim_idle_ms=200)) as event_bus:
        yield event_bus


def status(code: int, message: str = "") -> Status:
    return Status(code=code, message=message)


async def next_items(iterator: AsyncIterator[Item], n: int, timeout: float = 5.0) -> list[Item]:
    async def take() -> list[Item]:
        return [await anext(iterator) for _ in range(n)]

    return await asyncio.wait_for(take(), timeout)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ----------------------------------------------------------------- publish and read
async def test_published_entry_carries_every_field_and_unpacks(bus: EventBus, stream_prefix: str) -> None:
    stream = stream_prefix + "events"
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cursor = await bus.publish(stream, status(5, "nope"), subject="jobs/1", event_id="e1", trace_context=traceparent)
    [envelope] = await bus.read(stream)
    assert isinstance(envelope, Envelope)
    assert envelope.cursor == cursor
    assert (envelope.id, envelope.type, envelope.subject, envelope.seq) == ("e1", "google.rpc.Status", "jobs/1", 1)
    assert envelope.traceparent == traceparent
    assert envelope.epoch == cursor.epoch == await bus.epoch(stream)
    assert abs(envelope.time - int(cursor.entry_id.split("-")[0])) < 1000
    assert envelope.unpack(Status) == status(5, "nope")
    with pytest.raises(TypeMismatch):
        envelope.unpack(Struct)


async def test_publish_generates_id_and_w3c_traceparent(bus: EventBus, stream_prefix: str) -> None:
    stream = stream_prefix + "events"
    await bus.publish(stream, Struct())
    await bus.publish(stream, Struct())
    first, second = await bus.read(stream)
    assert isinstance(first, Envelope) and isinstance(second, Envelope)
    assert first.id != second.id and len(first.id) == 32
    version, trace_id, span_id, flags = first.traceparent.split("-")
    assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")
    with pytest.raises(ValueError):
        await bus.publish(stream, Struct(), trace_context="not-a-traceparent")


async def test_replay_from_cursor_returns_only_later_entries(bus: EventBus, stream_prefix: str) -> None:
    stream = stream_prefix + "events"
    cursors = [await bus.publish(stream, status(i), subject="jobs/1") for i in range(5)]
    items = await bus.read(stream, after=cursors[1])
    assert [item.unpack(Status).code for item in items if isinstance(item, Envelope)] == [2, 3, 4]
    assert [item.cursor for item in items] == cursors[2:]
    # The opaque token round-trips.
    assert await bus.read(stream, after=Cursor.parse(str(cursors[3]))) == items[2:]


async def test_follow_replays_then_delivers_live_entries(bus: EventBus, stream_prefix: str) -> None:
    stream = stream_prefix + "events"
    first = await bus.publish(stream, status(1))
    await bus.publish(stream, status(2))
    follower = bus.follow(stream, after=first)
    [replayed] = await next_items(follower, 1)
    live_task = asyncio.create_task(next_items(follower, 2))
    await asyncio.sleep(0.15)  # the follower is now blocked in XREAD
    await bus.publish(stream, status(3))
    await bus.publish(stream, status(4))
    live = await live_task
    await follower.aclose()
    assert [i.unpack(Status).code for i in [replayed, *live] if isinstance(i, Envelope)] == [2, 3, 4]


async def test_follow_from_latest_cursor_sees_only_new_entries(bus: EventBus, stream_prefix: str) -> None:
    stream = stream_prefix + "events"
    await bus.publish(stream, status(1))
    follower = bus.follow(stream, after=await bus.latest_cursor(stream))
    task = asyncio.create_task(next_items(follower, 1))
    await asyncio.sleep(0.05)
    await bus.publish(stream, status(2))
    [item] = await task
    await follower.aclose()
    assert isinstance(item, Envelope) and item.unpack(Status).code == 2


async def test_seq_is_per_subject_and_monotonic_under_concurrent_publishers(
    valkey: EmbeddedValkey, stream_prefix: str
) -> None:
    stream = stream_prefix + "events"
    buses = [EventBus(make_config(valkey.url)) for _ in range(4)]

    async def publisher(event_bus: EventBus, n: int) -> None:
        for i in range(n):
            await event_bus.publish(stream, Struct(), subject=f"jobs/{i % 3}")

    try:
        await asyncio.gather(*(publisher(b, 60) for b in buses))
        items = await buses[0].read(stream, count=1000)
    finally:
        for b in buses:
            await b.aclose()
    assert len(items) == 240
    by_subject: dict[str, list[int]] = {}
    for item in items:
        assert isinstance(item, Envelope)
        by_subject.setdefault(item.subject, []).append(item.seq)
    # Stream order == sequence order, with no gaps or duplicates, per subject.
    assert {s: seqs == list(range(1, len(seqs) + 1)) for s, seqs in by_subject.items()} == {
        "jobs/0": True, "jobs/1": True, "jobs/2": True,
    }
    assert sum(len(s) for s in by_subject.values()) == 240


async def test_maxlen_trims_the_stream_approximately(valkey: EmbeddedValkey, stream_prefix: str) -> None:
    stream = stream_prefix + "events"
    async with EventBus(make_config(valkey.url, maxlen=100)) as event_bus:
        for i in range(1000):
            await event_bus.publish(stream, status(i))
        length = await event_bus.client.xlen(stream)
        [*_, last] = await event_bus.read(stream, count=1000)
    assert 100 <= length < 300  # "~": trimmed in whole radix-tree nodes
    assert isinstance(last, Envelope) and last.unpack(Status).code == 999


def test_deduplicator_drops_repeats_by_epoch_subject_seq_and_by_id() -> None:
    def env(epoch: str, seq: int, event_id: str) -> Envelope:
        return Envelope("s", Cursor(epoch, "1-0"), event_id, "t", "jobs/1", seq, epoch, "", 0, b"")

    dedupe = Deduplicator(capacity=10)
    assert dedupe.seen(env("e1", 1, "a")) is False
    assert dedupe.seen(env("e1", 1, "a")) is True
    assert dedupe.seen(env("e1", 2, "a")) is True  # publish retried after a lost reply
    assert dedupe.seen(env("e2", 1, "b")) is False  # same seq in a new epoch is new
    for i in range(20):
        dedupe.seen(env("e3", i, f"x{i}"))
    assert len(dedupe) <= 10


# ----------------------------------------------------------------- consumer groups
async def test_group_consumer_acks_after_handler(bus: EventBus, stream_prefix: str) -> None:
    stream, group = stream_prefix + "events", "workers"
    for i in range(3):
        await bus.publish(stream, status(i))
    seen: list[int] = []
    stop = asyncio.Event()

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope.unpack(Status).code)

    task = asyncio.create_task(bus.consume(stream, group, "c1", handler, stop=stop))
    await wait_for(lambda: len(seen) == 3)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert seen == [0, 1, 2]
    assert (await bus.client.xpending(stream, group))["pending"] == 0


async def test_entries_of_a_cancelled_consumer_are_claimed_by_another(bus: EventBus, stream_prefix: str) -> None:
    stream, group = stream_prefix + "events", "workers"
    for i in range(3):
        await bus.publish(stream, status(i))
    stuck = asyncio.Event()
    got: list[Envelope] = []

    async def hang(envelope: Envelope) -> None:
        stuck.set()
        await asyncio.Event().wait()

    async def record(envelope: Envelope) -> None:
        got.append(envelope)

    dead = asyncio.create_task(bus.consume(stream, group, "dead", hang, count=3))
    await asyncio.wait_for(stuck.wait(), 5)
    dead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dead
    assert (await bus.client.xpending(stream, group))["pending"] == 3

    stop = asyncio.Event()
    alive = asyncio.create_task(bus.consume(stream, group, "alive", record, stop=stop))
    await wait_for(lambda: len(got) == 3)
    stop.set()
    await asyncio.wait_for(alive, 2)
    assert sorted(e.unpack(Status).code for e in got) == [0, 1, 2]
    assert all(e.deliveries == 2 for e in got)
    assert (await bus.client.xpending(stream, group))["pending"] == 0


async def test_entries_of_a_sigkilled_consumer_process_are_processed_by_another(
    bus: EventBus, valkey: EmbeddedValkey, stream_prefix: str
) -> None:
    stream, group = stream_prefix + "events", "workers"
    await bus.ensure_group(stream, group)
    await bus.publish(stream, status(7), subject="jobs/7")
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from services.shared.bus import BusConfig, EventBus

        async def main():
            async def handler(envelope):
                print(envelope.cursor.entry_id, flush=True)
                await asyncio.Event().wait()
            async with EventBus(BusConfig(url={valkey.url!r}, block_ms=100)) as bus:
                await bus.consume({stream!r}, {group!r}, "doomed", handler)

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}"},
    )
    try:
        assert proc.stdout is not None
        entry_id = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    pending = await bus.client.xpending_range(stream, group, min="-", max="+", count=10)
    assert [(p["message_id"].decode(), p["consumer"].decode()) for p in pending] == [(entry_id.strip(), "doomed")]

    got: list[Envelope] = []
    stop = asyncio.Event()

    async def record(envelope: Envelope) -> None:
        got.append(envelope)

    task = asyncio.create_task(bus.consume(stream, group, "survivor", record, stop=stop))
    await wait_for(lambda: len(got) == 1)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert got[0].unpack(Status).code == 7 and got[0].cursor.entry_id == entry_id.strip()
    assert (await bus.client.xpending(stream, group))["pending"] == 0


async def test_failing_entry_goes_to_dlq_after_max_deliveries(valkey: EmbeddedValkey, stream_prefix: str) -> None:
    stream, group = stream_prefix + "events", "workers"
    attempts: list[int] = []
    good: list[int] = []
    async with EventBus(make_config(valkey.url, claim_idle_ms=50, max_deliveries=3)) as event_bus:
        await event_bus.publish(stream, status(13, "poison"), subject="jobs/1")
        await event_bus.publish(stream, status(0, "fine"), subject="jobs/1")

        async def handler(envelope: Envelope) -> None:
            message = envelope.unpack(Status)
            if message.code == 13:
                attempts.append(envelope.deliveries)
                raise RuntimeError(f"cannot handle {message.message}")
            good.append(message.code)

        stop = asyncio.Event()
        task = asyncio.create_task(event_bus.consume(stream, group, "c1", handler, stop=stop))
        await wait_for(lambda: len(attempts) == 3)
        await wait_for(lambda: good == [0])
        async with asyncio.timeout(5):
            while not await event_bus.client.xlen(dlq_stream(stream)):
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
        [letter] = await event_bus.dead_letters(stream)
        pending = (await event_bus.client.xpending(stream, group))["pending"]
    assert attempts == [1, 2, 3]
    assert good == [0]
    assert letter.error == "RuntimeError: cannot handle poison"
    assert letter.deliveries == 3
    assert (letter.group, letter.consumer, letter.source_stream) == (group, "c1", stream)
    assert letter.envelope.unpack(Status) == status(13, "poison")
    assert letter.envelope.subject == "jobs/1" and letter.envelope.seq == 1
    assert pending == 0


async def test_entry_that_keeps_killing_consumers_is_dead_lettered(valkey: EmbeddedValkey, stream_prefix: str) -> None:
    """A consumer that dies on an entry never raises; the delivery count still caps it."""
    stream, group = stream_prefix + "events", "workers"
    async with EventBus(make_config(valkey.url, claim_idle_ms=30, max_deliveries=2)) as event_bus:
        await event_bus.publish(stream, status(9))
        for attempt in range(2):
            started = asyncio.Event()

            async def die(envelope: Envelope) -> None:
                started.set()
                await asyncio.Event().wait()

            task = asyncio.create_task(event_bus.consume(stream, group, f"victim{attempt}", die))
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
        handled: list[Envelope] = []

        async def record(envelope: Envelope) -> None:
            handled.append(envelope)

        stop = asyncio.Event()
        task = asyncio.create_task(event_bus.consume(stream, group, "last", record, stop=stop))
        async with asyncio.timeout(5):
            while not await event_bus.client.xlen(dlq_stream(stream)):
                await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
        [letter] = await event_bus.dead_letters(stream)
    assert handled == []
    assert letter.deliveries == 3
    assert "not acknowledged after 2 deliveries" in letter.error


# ----------------------------------------------------------------- restarts and epochs
async def test_epoch_changes_after_restart_and_follow_reports_it(
    valkey_factory: Callable[[], EmbeddedValkey], stream_prefix: str
) -> None:
    server = valkey_factory()
    stream = stream_prefix + "events"
    async with EventBus(make_config(server.url)) as event_bus:
        cursor = await event_bus.publish(stream, status(1), subject="jobs/1")
        old_epoch = cursor.epoch
        follower = event_bus.follow(stream, after=cursor)
        pending_read = asyncio.create_task(next_items(follower, 2, timeout=10))
        await asyncio.sleep(0.15)
        server.restart()  # no persistence: stream, seq and epoch are gone
        new_cursor = await event_bus.publish(stream, status(2), subject="jobs/1")
        changed, after_restart = await pending_read
        await follower.aclose()
        assert new_cursor.epoch != old_epoch
        assert changed == EpochChanged(stream, old_epoch, new_cursor.epoch)
        assert isinstance(after_restart, Envelope)
        assert after_restart.unpack(Status).code == 2
        assert after_restart.seq == 1  # sequences restart in a new epoch
        # A reader holding an old cursor learns it too.
        [marker, entry] = await event_bus.read(stream, after=cursor)
        assert marker == changed and entry == after_restart


async def test_group_is_recreated_after_restart_and_consumption_continues(
    valkey_factory: Callable[[], EmbeddedValkey], stream_prefix: str
) -> None:
    server = valkey_factory()
    stream, group = stream_prefix + "events", "workers"
    got: list[int] = []

    async def handler(envelope: Envelope) -> None:
        got.append(envelope.unpack(Status).code)

    async with EventBus(make_config(server.url)) as event_bus:
        await event_bus.publish(stream, status(1))
        stop = asyncio.Event()
        task = asyncio.create_task(event_bus.consume(stream, group, "c1", handler, stop=stop))
        await wait_for(lambda: got == [1])
        server.restart()
        # Publish right away: whichever of NOGROUP / reconnect the consumer sees, the
        # recreated group starts at 0 and gets the entry.
        await event_bus.publish(stream, status(2))
        await wait_for(lambda: got == [1, 2])
        stop.set()
        await asyncio.wait_for(task, 2)
        groups = await event_bus.client.xinfo_groups(stream)
    assert [g["name"].decode() for g in groups] == [group]


async def test_consumer_and_publisher_reconnect_when_the_server_comes_back(
    valkey_factory: Callable[[], EmbeddedValkey], stream_prefix: str
) -> None:
    server = valkey_factory()
    stream, group = stream_prefix + "events", "workers"
    got: list[int] = []

    async def handler(envelope: Envelope) -> None:
        got.append(envelope.unpack(Status).code)

    async with EventBus(make_config(server.url, publish_timeout_s=10)) as event_bus:
        stop = asyncio.Event()
        task = asyncio.create_task(event_bus.consume(stream, group, "c1", handler, stop=stop))
        await event_bus.publish(stream, status(1))
        await wait_for(lambda: got == [1])
        server.stop()
        publishing = asyncio.create_task(event_bus.publish(stream, status(2)))
        await asyncio.sleep(0.5)  # publisher and consumer are both backing off now
        assert not publishing.done() and not task.done()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(publishing, 5)
        await wait_for(lambda: got == [1, 2])
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_publish_gives_up_after_its_budget(
    valkey_factory: Callable[[], EmbeddedValkey], stream_prefix: str
) -> None:
    server = valkey_factory()
    url = server.url
    server.stop()
    async with EventBus(make_config(url, publish_timeout_s=0.3)) as event_bus:
        with pytest.raises(BusUnavailable):
            await event_bus.publish(stream_prefix + "events", Struct())


def test_config_from_env() -> None:
    config = BusConfig.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:7000/2",
            "AF_BUS_MAXLEN": "500",
            "AF_BUS_CLAIM_IDLE_MS": "1500",
            "AF_BUS_MAX_DELIVERIES": "7",
            "AF_BUS_BLOCK_MS": "250",
            "AF_BUS_BACKOFF_INITIAL_MS": "10",
            "AF_BUS_BACKOFF_MAX_MS": "800",
        }
    )
    assert (config.url, config.maxlen, config.claim_idle_ms, config.max_deliveries, config.block_ms) == (
        "redis://127.0.0.1:7000/2", 500, 1500, 7, 250,
    )
    assert (config.backoff.initial_s, config.backoff.max_s) == (0.01, 0.8)
    assert BusConfig.from_env({}) == BusConfig()


async def test_cancelled_follow_and_consume_tasks_end_within_block_ms(bus: EventBus, stream_prefix: str) -> None:
    """Cancellation is never swallowed by the reconnect loops (block_ms is 100 here)."""
    stream = stream_prefix + "events"

    async def drain() -> None:
        async for _item in bus.follow(stream):
            pass

    async def ignore(envelope: Envelope) -> None:
        return None

    for _ in range(10):
        tasks = [asyncio.create_task(drain()), asyncio.create_task(bus.consume(stream, "g", "c1", ignore))]
        await asyncio.sleep(0.02)
        await bus.publish(stream, Struct())
        for task in tasks:
            task.cancel()
        done, pending = await asyncio.wait(tasks, timeout=1.0)
        assert pending == set()
        assert all(task.cancelled() for task in done)


# ----------------------------------------------------------------- publish_many
async def test_publish_many_appends_in_order_with_contiguous_per_subject_seq(
    valkey: EmbeddedValkey, stream_prefix: str
) -> None:
    stream = stream_prefix + "events"
    async with EventBus(make_config(valkey.url)) as a, EventBus(make_config(valkey.url)) as b:
        await a.publish(stream, status(0), subject="jobs/1")
        messages = [status(i) for i in range(1, 601)]  # more than one script call's chunk
        serialized = [m.SerializeToString() for m in messages]
        ids = [f"batch-{i}" for i in range(1, 601)]

        async def interleave() -> None:  # another publisher on the same subject meanwhile
            for i in range(20):
                await b.publish(stream, status(10_000 + i), subject="jobs/1")

        cursors, _ = await asyncio.gather(
            a.publish_many(stream, messages, subject="jobs/1", serialized=serialized, event_ids=ids),
            interleave())
        items = await a.read(stream, count=2000)
    envelopes = [i for i in items if isinstance(i, Envelope)]
    assert len(envelopes) == len(items) == 621
    # Per-subject seq allocated atomically in stream order: 1..621, no gaps, no repeats.
    assert [e.seq for e in envelopes] == list(range(1, 622))
    ours = [e for e in envelopes if e.id.startswith("batch-")]
    assert [e.unpack(Status).code for e in ours] == list(range(1, 601))
    assert [e.id for e in ours] == ids and [e.cursor for e in ours] == cursors
    assert all(e.subject == "jobs/1" and e.epoch == cursors[0].epoch and e.traceparent for e in ours)
    # Within one chunk nothing else lands between the batch's entries.
    positions = [envelopes.index(e) for e in ours[:256]]
    assert positions == list(range(positions[0], positions[0] + 256))


async def test_publish_many_of_nothing_writes_nothing_and_rejects_mismatched_bytes(
    bus: EventBus, stream_prefix: str
) -> None:
    stream = stream_prefix + "events"
    assert await bus.publish_many(stream, []) == []
    assert await bus.client.exists(stream) == 0
    with pytest.raises(ValueError):
        await bus.publish_many(stream, [status(1)], serialized=[])


async def test_publish_many_gives_up_after_its_budget(
    valkey_factory: Callable[[], EmbeddedValkey], stream_prefix: str
) -> None:
    server = valkey_factory()
    url = server.url
    server.stop()
    async with EventBus(make_config(url, publish_timeout_s=0.3)) as event_bus:
        with pytest.raises(BusUnavailable):
            await event_bus.publish_many(stream_prefix + "events", [Struct(), Struct()])
