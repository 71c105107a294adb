"""Event bus delivery latency on a real (embedded) Valkey.

Measures, one event in flight at a time (latency, not queueing):

- ``publish``: the ``EventBus.publish`` call alone (Lua: epoch + seq + XADD);
- ``publish→follow``: from calling ``publish`` to the event arriving in a
  ``follow()`` iterator blocked in XREAD (separate connection);
- ``publish→group``: from calling ``publish`` to the handler of a ``consume()``
  loop (XREADGROUP) being called; the XACK happens after.

Then a burst: N events published back to back, time until the follower has all.

Run: ``PYTHONPATH=.:gen/python .venv/bin/python benchmarks/bus_latency.py --n 2000``
(``--url redis://…`` to measure an external Redis instead of embedded Valkey).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from google.rpc.status_pb2 import Status

from services.shared.bus import BusConfig, Envelope, EventBus
from services.shared.valkey import EmbeddedValkey

__all__ = ["main"]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    publisher: EventBus,
    stream: str,
    n: int,
    warmup: int,
    start_receiver: Callable[[Callable[[Envelope], None]], Awaitable[asyncio.Task[None]]],
) -> list[float]:
    """Publish n+warmup events one at a time; return publish→receive latencies (ms)."""
    sent: dict[str, int] = {}
    arrived: dict[str, int] = {}
    signal = asyncio.Event()

    def on_receive(envelope: Envelope) -> None:
        arrived[envelope.id] = time.perf_counter_ns()
        signal.set()

    task = await start_receiver(on_receive)
    await asyncio.sleep(0.2)  # receiver is blocked in XREAD / XREADGROUP
    message = Status(code=0, message="x" * 64)
    latencies = []
    for i in range(n + warmup):
        event_id = uuid.uuid4().hex
        signal.clear()
        sent[event_id] = time.perf_counter_ns()
        await publisher.publish(stream, message, subject="jobs/bench", event_id=event_id)
        while event_id not in arrived:
            await signal.wait()
            signal.clear()
        if i >= warmup:
            latencies.append((arrived[event_id] - sent[event_id]) / 1e6)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return latencies


async def run(url: str, n: int, warmup: int) -> list[tuple[str, list[float]]]:
    config = BusConfig(url=url, block_ms=1000)
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    async with EventBus(config) as publisher, EventBus(config) as receiver:
        # publish only
        publish_ms = []
        stream = prefix + "publish"
        for i in range(n + warmup):
            t0 = time.perf_counter_ns()
            await publisher.publish(stream, Status(code=0, message="x" * 64), subject="jobs/bench")
            if i >= warmup:
                publish_ms.append((time.perf_counter_ns() - t0) / 1e6)

        # publish → follow
        follow_stream = prefix + "follow"

        async def start_follower(on_receive: Callable[[Envelope], None]) -> asyncio.Task[None]:
            cursor = await receiver.latest_cursor(follow_stream)

            async def loop() -> None:
                async for item in receiver.follow(follow_stream, after=cursor):
                    if isinstance(item, Envelope):
                        on_receive(item)

            return asyncio.create_task(loop())

        follow_ms = await measure(publisher, follow_stream, n, warmup, start_follower)

        # publish → consumer group handler
        group_stream = prefix + "group"

        async def start_consumer(on_receive: Callable[[Envelope], None]) -> asyncio.Task[None]:
            await receiver.ensure_group(group_stream, "bench", start_id="$")

            async def handler(envelope: Envelope) -> None:
                on_receive(envelope)

            return asyncio.create_task(receiver.consume(group_stream, "bench", "c1", handler))

        group_ms = await measure(publisher, group_stream, n, warmup, start_consumer)

        # burst: n events back to back, until the follower has them all
        burst_stream = prefix + "burst"
        cursor = await receiver.latest_cursor(burst_stream)
        done = asyncio.Event()

        async def drain() -> None:
            seen = 0
            async for item in receiver.follow(burst_stream, after=cursor, count=500):
                seen += isinstance(item, Envelope)
                if seen == n:
                    done.set()
                    return

        drainer = asyncio.create_task(drain())
        t0 = time.perf_counter()
        for _ in range(n):
            await publisher.publish(burst_stream, Status(code=0, message="x" * 64), subject="jobs/bench")
        await asyncio.wait_for(done.wait(), 60)
        burst_s = time.perf_counter() - t0
        await drainer
        for suffix in ("publish", "follow", "group", "burst"):
            await publisher.client.delete(prefix + suffix, prefix + suffix + ":epoch", prefix + suffix + ":seq")
    return [
        ("publish (call only)", publish_ms),
        ("publish→follow (XREAD)", follow_ms),
        ("publish→group (XREADGROUP)", group_ms),
        (f"burst {n} events, follow: {n / burst_s:,.0f} ev/s", []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="measured events per case")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--url", default="", help="external Redis URL (default: embedded Valkey)")
    args = parser.parse_args()

    server = None if args.url else EmbeddedValkey().start()
    try:
        url = args.url or server.url  # type: ignore[union-attr]
        results = asyncio.run(run(url, args.n, args.warmup))
    finally:
        if server is not None:
            server.close()

    print(f"bus latency: n={args.n} warmup={args.warmup} python={platform.python_version()} "
          f"redis={'embedded valkey' if server else args.url}")
    print(f"{'case':<30} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8}")
    for name, samples in results:
        if not samples:
            print(name)
            continue
        print(f"{name:<30} {percentile(samples, 0.5):>8.3f} {percentile(samples, 0.99):>8.3f} "
              f"{statistics.fmean(samples):>8.3f} {max(samples):>8.3f}")


if __name__ == "__main__":
    main()
