"""Event-loop lag: how late the loop runs a timer, as a Prometheus histogram.

Every service runs one asyncio loop; anything that blocks it (a synchronous SQLite
statement, a large JSON encode, CPU-bound work) delays every call and stream of the
process. :class:`EventLoopLag` sleeps :data:`INTERVAL_S` at a time and observes how much
later than due the loop woke it, into ``agentforge_event_loop_lag_seconds`` (the same
measure as Node's ``monitorEventLoopDelay`` and prom-client's
``nodejs_eventloop_lag_seconds``). ``build_server`` starts one per service when metrics
are on; ``benchmarks/edge_unary.py`` reports its quantiles per scenario.

The loop's timer resolution is about 1 ms (asyncio rounds selector timeouts up to
milliseconds), so an idle loop shows 0–1 ms.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram

__all__ = ["BUCKETS", "EventLoopLag", "INTERVAL_S", "METRIC_NAME"]

METRIC_NAME = "agentforge_event_loop_lag_seconds"
#: How often the timer is due, in seconds.
INTERVAL_S = 0.1
#: Histogram buckets, in seconds (1 ms, the timer resolution, up to 5 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EventLoopLag:
    """Observes the lateness of a periodic timer on the running loop (see the module doc)."""

    def __init__(self, registry: CollectorRegistry, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(
            METRIC_NAME,
            f"Seconds the event loop ran a timer due every {interval_s:g} s later than due "
            "(time the loop was busy with other work).",
            buckets=BUCKETS, registry=registry,
        )

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.histogram.observe(max(0.0, loop.time() - due))
