"""The shared fan-out: in-process delivery, slow consumers, and the bus readers on real Valkey."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import struct_pb2
from redis.asyncio import Redis

from services.shared.bus import Backoff, BusConfig, Envelope, EventBus
from services.shared.fanout import GAP_OVERFLOW, BusFanout, Fanout, FanoutClosed, Gap
from services.shared.valkey import EmbeddedValkey

FAST = Backoff(initial_s=0.02, max_s=0.2)


def value(n: int) -> struct_pb2.Value:
    return struct_pb2.Value(number_value=n)


async def collect(watcher, n: int, timeout: float = 10.0) -> list[object]:
    items: list[object] = []
    async with asyncio.timeout(timeout):
        while len(items) < n:
            got = await watcher.get(timeout)
            assert not isinstance(got, Gap), got
            if got:
                items += [item for _key, item in got]
    return items


async def connected_clients(url: str) -> int:
    async with Redis.from_url(url) as probe:
        info = await probe.info("clients")
        return int(info["connected_clients"]) - 1  # not the probe itself


# ----------------------------------------------------------------- in process
async def test_every_watcher_of_a_key_gets_every_item_in_order() -> None:
    fanout: Fanout[str, int] = Fanout("t", capacity=100)
    a = await fanout.watch(["x"])
    b = await fanout.watch(["x", "y"])
    c = await fanout.watch(["y"])
    for i in range(50):
        fanout.publish("x", i)
    fanout.publish("y", 99)
    assert await collect(a, 50) == list(range(50))
    assert await collect(b, 51) == [*range(50), 99]
    assert await collect(c, 1) == [99]
    assert fanout.watcher_count == 3
    for w in (a, b, c):
        await w.close()
    assert fanout.watcher_count == 0 and fanout.keys() == [] and fanout.buffered_items == 0


async def test_overflow_drops_the_slow_watchers_buffer_with_a_gap_and_never_stalls_others() -> None:
    fanout: Fanout[str, int] = Fanout("t", capacity=10)
    slow = await fanout.watch(["x"])
    fast = await fanout.watch(["x"])
    received: list[int] = []
    for i in range(100):
        fanout.publish("x", i)  # never blocks, whatever the slow watcher does
        got = await fast.get(0)
        assert isinstance(got, list)
        received += [item for _k, item in got]
    assert received == list(range(100))
    gap = await slow.get(0)
    assert isinstance(gap, Gap) and gap.reason == GAP_OVERFLOW and gap.keys == {"x"}
    # The overflowed buffer was freed at once; items after the gap arrive again.
    assert slow.buffered == 0 and fanout.buffered_items == 0
    fanout.publish("x", 100)
    assert await slow.get(0) == [("x", 100)]
    assert fanout.gaps == {GAP_OVERFLOW: 1}


async def test_a_byte_bound_caps_what_a_slow_watcher_keeps_alive() -> None:
    fanout: Fanout[str, bytes] = Fanout("t", capacity=1000, max_bytes=1000, size_of=len)
    slow = await fanout.watch(["x"])
    roomy = await fanout.watch(["x"], max_bytes=10_000)
    for _ in range(5):
        fanout.publish("x", b"y" * 300)  # the 4th would make 1,200 bytes
    gap = await slow.get(0)
    assert isinstance(gap, Gap) and gap.reason == GAP_OVERFLOW
    assert len(await roomy.get(0)) == 5
    fanout.publish("x", b"z" * 5000)  # one item larger than the bound still passes alone
    assert await slow.get(0) == [("x", b"z" * 5000)]


async def test_get_times_out_and_close_ends_watchers_with_the_error() -> None:
    fanout: Fanout[str, int] = Fanout("t")
    watcher = await fanout.watch(["x"])
    started = time.monotonic()
    assert await watcher.get(0.1) is None
    assert time.monotonic() - started >= 0.09
    waiting = asyncio.create_task(watcher.get(None))
    await asyncio.sleep(0.01)
    fanout.close(RuntimeError("shutting down"))
    with pytest.raises(RuntimeError, match="shutting down"):
        await waiting
    with pytest.raises(RuntimeError):
        await fanout.watch(["x"])
    assert isinstance(FanoutClosed("x"), Exception)


# ----------------------------------------------------------------- on the bus
def bus_config(url: str, **overrides: object) -> BusConfig:
    values: dict[str, object] = {"url": url, "block_ms": 200, "backoff": FAST}
    values.update(overrides)
    return BusConfig(**values)  # type: ignore[arg-type]


async def test_bus_fanout_connections_do_not_grow_with_watchers(valkey_factory: object) -> None:
    server: EmbeddedValkey = valkey_factory()  # type: ignore[operator]
    config = bus_config(server.url)
    async with EventBus(config) as publisher, BusFanout("t", config, readers=2, catchup_connections=4) as fanout:
        streams = [f"s{i}" for i in range(20)]
        watchers = [await fanout.watch([streams[i % 20]]) for i in range(400)]
        for round_ in range(5):
            for stream in streams:
                await publisher.publish(stream, value(round_), subject=stream)
        for watcher in watchers:
            items = await collect(watcher, 5)
            assert [struct_pb2.Value.FromString(e.data).number_value for e in items] == [0, 1, 2, 3, 4]
            assert all(isinstance(e, Envelope) for e in items)
        # 2 readers + at most 4 pooled catch-up connections + the publisher's pool.
        clients = await connected_clients(server.url)
        assert clients <= 2 + 4 + 2, clients
        for watcher in watchers:
            await watcher.close()


async def test_a_new_stream_is_followed_at_once_not_after_the_block_time(valkey_factory: object) -> None:
    server: EmbeddedValkey = valkey_factory()  # type: ignore[operator]
    config = bus_config(server.url, block_ms=5_000)
    async with EventBus(config) as publisher, BusFanout("t", config, readers=1) as fanout:
        first = await fanout.watch(["a"])
        await asyncio.sleep(0.3)  # the reader is now blocked on "a" alone
        second = await fanout.watch(["b"])
        started = time.monotonic()
        await publisher.publish("b", value(1), subject="b")
        [entry] = await collect(second, 1)
        assert entry.stream == "b" and time.monotonic() - started < 1.0
        await first.close()
        await second.close()


async def test_valkey_restart_sends_gaps_and_delivery_resumes(valkey_factory: object) -> None:
    server: EmbeddedValkey = valkey_factory()  # type: ignore[operator]
    config = bus_config(server.url)
    async with BusFanout("t", config, epoch_check_interval_s=0.2) as fanout:
        watcher = await fanout.watch(["s"])
        async with EventBus(config) as publisher:
            await publisher.publish("s", value(1), subject="s")
            [before] = await collect(watcher, 1)
        server.stop()
        server.start()
        gap = None
        async with asyncio.timeout(10):
            while gap is None:
                got = await watcher.get(5)
                if isinstance(got, Gap):
                    gap = got
        assert gap.keys == {"s"}
        async with EventBus(config) as publisher:
            await publisher.publish("s", value(2), subject="s")
        [after] = await collect(watcher, 1)
        assert after.epoch != before.epoch and after.seq == 1
        await watcher.close()
