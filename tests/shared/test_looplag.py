"""Event-loop lag (services/shared/looplag.py): a blocked loop shows in the histogram,
and every server built by build_server exports it."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.shared.looplag import METRIC_NAME, EventLoopLag

from .conftest import EchoServer


def _sample(registry: CollectorRegistry, suffix: str) -> float:
    value = registry.get_sample_value(METRIC_NAME + suffix)
    assert value is not None
    return value


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    registry = CollectorRegistry()
    lag = EventLoopLag(registry, interval_s=0.05)
    task = asyncio.ensure_future(lag.run())
    try:
        await asyncio.sleep(0)  # the monitor's first timer is now due 50 ms from here
        time.sleep(0.3)  # blocks the loop: that timer runs at least 250 ms late
        while _sample(registry, "_count") < 2:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    # A slower machine only makes the lag larger: the bounds below hold on any.
    assert _sample(registry, "_sum") >= 0.25
    assert registry.get_sample_value(METRIC_NAME + "_bucket", {"le": "0.1"}) < _sample(registry, "_count")


async def test_the_servers_metrics_endpoint_exports_it(echo_server: EchoServer) -> None:
    await asyncio.sleep(0.25)  # a couple of 100 ms timers
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{echo_server.service.metrics_port}/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families[METRIC_NAME]
    assert family.type == "histogram"
    count = [s.value for s in family.samples if s.name == METRIC_NAME + "_count"]
    assert count and count[0] >= 1
