"""MonitoringService against real peers, a real Valkey and real grpc.aio servers."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2
from grpc_status import rpc_status

from agentforge.events.v1 import event_pb2
from agentforge.monitoring.v1 import alert_rule_pb2, health_pb2
from agentforge.monitoring.v1 import request_response_pb2 as rr
from services.monitoring.config import Target
from services.monitoring.server import MonitoringServer
from services.shared.bus import BusConfig, EventBus
from services.shared.server import Service
from services.shared.valkey import EmbeddedValkey

from .conftest import PeerProcess, start_peer
from tests.support import error_details, field_violations

SERVING = health_pb2.HEALTH_STATUS_SERVING
NOT_SERVING = health_pb2.HEALTH_STATUS_NOT_SERVING
DEGRADED = health_pb2.HEALTH_STATUS_DEGRADED
UNKNOWN = health_pb2.HEALTH_STATUS_UNKNOWN
SERVICE_KINDS = [health_pb2.COMPONENT_KIND_SERVICE, health_pb2.COMPONENT_KIND_DEPENDENCY]


def by_name(health: health_pb2.SystemHealth) -> dict[str, health_pb2.ComponentHealth]:
    return {c.name: c for c in health.components}


async def poll(stub: Any, predicate: Callable[[health_pb2.SystemHealth], bool], timeout: float = 5.0,
               kinds: list[int] | None = None) -> health_pb2.SystemHealth:
    deadline = time.monotonic() + timeout
    while True:
        health = await stub.GetSystemHealth(rr.GetSystemHealthRequest(kinds=kinds or []))
        if predicate(health):
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s: {health}")
        await asyncio.sleep(0.05)


async def next_matching(stream: Any, predicate: Callable[[health_pb2.SystemHealth], bool],
                        timeout: float) -> health_pb2.SystemHealth:
    async def read() -> health_pb2.SystemHealth:
        while True:
            message = await stream.read()
            assert message is not grpc.aio.EOF
            if predicate(message):
                return message
    return await asyncio.wait_for(read(), timeout)


def status_of(name: str, status: int) -> Callable[[health_pb2.SystemHealth], bool]:
    return lambda h: name in by_name(h) and by_name(h)[name].status == status


async def start_two_peers(make: Any, peer_inproc: list[Service], peer_process: PeerProcess,
                          redis_url: str | None, **knobs: Any) -> MonitoringServer:
    targets = (Target("training", f"127.0.0.1:{peer_inproc[0].port}"), Target("model", peer_process.address))
    return await make(targets=targets, redis_url=redis_url, **knobs)


async def test_system_health_shows_peers_valkey_and_itself_serving_with_latency(
    monitoring_factory: Any, stub_factory: Any, peer_inproc: list[Service], peer_process: PeerProcess,
    valkey: EmbeddedValkey,
) -> None:
    mon = await start_two_peers(monitoring_factory, peer_inproc, peer_process, valkey.url)
    stub = stub_factory(mon.port)
    names = ["components/model", "components/monitoring", "components/training", "components/valkey"]
    health = await poll(stub, lambda h: all(by_name(h)[n].status == SERVING and by_name(h)[n].HasField("latency")
                                            for n in names))
    comps = by_name(health)
    assert [c.name for c in health.components] == sorted(comps)  # ordered by name
    for name in names:
        c = comps[name]
        assert 0 < c.latency.ToNanoseconds() < 1_000_000_000
        assert c.last_check_time.seconds > 0 and c.last_change_time.seconds > 0 and c.message == ""
    assert comps["components/training"].endpoint == f"127.0.0.1:{peer_inproc[0].port}"
    assert comps["components/monitoring"].endpoint == f"127.0.0.1:{mon.port}"
    # Every viewer reads the endpoint: never with the password REDIS_URL carries.
    password = urllib.parse.urlsplit(valkey.url).password
    assert password and password not in comps["components/valkey"].endpoint
    assert comps["components/valkey"].endpoint == valkey.url.replace(f":{password}@", "@")
    assert comps["components/valkey"].kind == health_pb2.COMPONENT_KIND_DEPENDENCY
    # Envoy is not configured here: UNKNOWN, never assumed healthy, and it keeps the whole system UNKNOWN.
    envoy = comps["components/envoy"]
    assert (envoy.status, envoy.kind) == (UNKNOWN, health_pb2.COMPONENT_KIND_EDGE)
    assert "not configured" in envoy.message
    assert health.status == UNKNOWN
    only = await stub.GetSystemHealth(rr.GetSystemHealthRequest(kinds=SERVICE_KINDS))
    assert only.status == SERVING and "components/envoy" not in by_name(only)

    one = await stub.GetComponentHealth(rr.GetComponentHealthRequest(name="components/training"))
    assert one.status == SERVING and one.uptime.ToNanoseconds() > 0


async def test_killed_peer_process_is_not_serving_within_one_second_then_recovers(
    monitoring_factory: Any, stub_factory: Any, peer_inproc: list[Service], peer_process: PeerProcess,
    valkey: EmbeddedValkey,
) -> None:
    mon = await start_two_peers(monitoring_factory, peer_inproc, peer_process, valkey.url)
    stub = stub_factory(mon.port)
    stream = stub.WatchSystemHealth(rr.WatchSystemHealthRequest(interval=duration_pb2.Duration(seconds=300)))
    first = await stream.read()
    assert list(first.changed_components) == []  # the first message is a plain snapshot
    await next_matching(stream, status_of("components/model", SERVING), timeout=5)

    killed = time.monotonic()
    peer_process.kill()
    down = await next_matching(stream, status_of("components/model", NOT_SERVING), timeout=5)
    elapsed = time.monotonic() - killed
    print(f"components/model NOT_SERVING {elapsed * 1000:.0f} ms after SIGKILL")
    assert elapsed < 1.0, f"NOT_SERVING after {elapsed:.3f}s"
    assert "components/model" in down.changed_components
    model = by_name(down)["components/model"]
    assert "UNAVAILABLE" in model.message and model.uptime.ToNanoseconds() == 0
    assert down.status == NOT_SERVING  # a service is down

    peer_process.start()  # same port
    up = await next_matching(stream, status_of("components/model", SERVING), timeout=5)
    assert "components/model" in up.changed_components
    assert up.status == UNKNOWN  # back to "all serving, Envoy not configured"
    stream.cancel()


async def test_stopped_in_process_peer_is_not_serving_within_one_second_then_recovers(
    monitoring_factory: Any, stub_factory: Any, peer_inproc: list[Service], peer_process: PeerProcess,
) -> None:
    mon = await start_two_peers(monitoring_factory, peer_inproc, peer_process, None)
    stub = stub_factory(mon.port)
    stream = stub.WatchSystemHealth(rr.WatchSystemHealthRequest(kinds=[health_pb2.COMPONENT_KIND_SERVICE]))
    await next_matching(stream, status_of("components/training", SERVING), timeout=5)

    port = peer_inproc[0].port
    stopped = time.monotonic()
    await peer_inproc.pop().shutdown(1.0)
    await next_matching(stream, status_of("components/training", NOT_SERVING), timeout=5)
    elapsed = time.monotonic() - stopped
    print(f"components/training NOT_SERVING {elapsed * 1000:.0f} ms after server stop")
    assert elapsed < 1.0

    peer_inproc.append(await start_peer(port))
    recovered = await next_matching(stream, status_of("components/training", SERVING), timeout=5)
    assert {c.kind for c in recovered.components} == {health_pb2.COMPONENT_KIND_SERVICE}
    stream.cancel()


async def test_valkey_stopped_is_not_serving_and_the_system_degraded(
    monitoring_factory: Any, stub_factory: Any, peer_inproc: list[Service], peer_process: PeerProcess,
    valkey_factory: Callable[[], EmbeddedValkey],
) -> None:
    server = valkey_factory()
    mon = await start_two_peers(monitoring_factory, peer_inproc, peer_process, server.url)
    stub = stub_factory(mon.port)
    await poll(stub, lambda h: h.status == SERVING, kinds=SERVICE_KINDS)

    server.stop()
    health = await poll(stub, status_of("components/valkey", NOT_SERVING))
    valkey = by_name(health)["components/valkey"]
    assert "PING failed" in valkey.message
    assert health.status == DEGRADED  # services serve, a dependency is down
    assert (await stub.GetSystemHealth(rr.GetSystemHealthRequest(kinds=SERVICE_KINDS))).status == DEGRADED


async def test_status_changes_are_published_as_health_changed_events(
    monitoring_factory: Any, stub_factory: Any, peer_inproc: list[Service], peer_process: PeerProcess,
    valkey: EmbeddedValkey, stream_prefix: str,
) -> None:
    stream_name = f"{stream_prefix}events.health"
    mon = await start_two_peers(monitoring_factory, peer_inproc, peer_process, valkey.url, events_stream=stream_name)
    stub = stub_factory(mon.port)
    await poll(stub, status_of("components/model", SERVING))
    peer_process.kill()
    await poll(stub, status_of("components/model", NOT_SERVING))

    async with EventBus(BusConfig(url=valkey.url)) as bus:
        deadline = time.monotonic() + 5
        found = None
        while found is None and time.monotonic() < deadline:
            for item in await bus.read(stream_name, None, count=1000):
                event = item.unpack(event_pb2.Event)
                change = event.health_changed
                if (event.subject == "components/model" and change.component.status == NOT_SERVING
                        and change.previous_status == SERVING):
                    found = event
            await asyncio.sleep(0.05)
    assert found is not None
    assert found.type == "agentforge.events.v1.HealthChanged" and found.source == "monitoring"
    assert found.sequence >= 2 and len(found.id) == 32  # UNKNOWN→SERVING came first


def violations(status: Any) -> tuple[list[str], list[str]]:
    info, _ = error_details(status)
    return ([info.reason] if info else []), field_violations(status)


BAD_REQUESTS = [
    ("GetSystemHealth", rr.GetSystemHealthRequest(kinds=[0]), "kinds[0]"),
    ("GetComponentHealth", rr.GetComponentHealthRequest(name="valkey"), "name"),
    ("WatchSystemHealth", rr.WatchSystemHealthRequest(interval=duration_pb2.Duration(nanos=100_000_000)), "interval"),
    ("ListMethodMetrics", rr.ListMethodMetricsRequest(parent="training"), "parent"),
    ("ListAlerts", rr.ListAlertsRequest(page_size=5000), "page_size"),
    ("GetAlert", rr.GetAlertRequest(name="alert-1"), "name"),
    ("WatchAlerts", rr.WatchAlertsRequest(cursor="x" * 300), "cursor"),
    ("AcknowledgeAlert", rr.AcknowledgeAlertRequest(name="alerts/a1"), "acknowledged_by"),
    ("CreateAlertRule", rr.CreateAlertRuleRequest(alert_rule=alert_rule_pb2.AlertRule(severity=1)), "alert_rule"),
    ("GetAlertRule", rr.GetAlertRuleRequest(name="rules/x"), "name"),
    ("ListAlertRules", rr.ListAlertRulesRequest(page_size=-1), "page_size"),
    ("UpdateAlertRule", rr.UpdateAlertRuleRequest(alert_rule=alert_rule_pb2.AlertRule(name="x")), "alert_rule"),
    ("DeleteAlertRule", rr.DeleteAlertRuleRequest(name=""), "name"),
]


@pytest.mark.parametrize(("method", "request_message", "field"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_input_is_invalid_argument_with_field_violations(
    monitoring_factory: Any, stub_factory: Any, method: str, request_message: Any, field: str
) -> None:
    mon = await monitoring_factory()
    call = getattr(stub_factory(mon.port), method)(request_message)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if method.startswith("Watch"):
            await call.read()
        else:
            await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reasons, fields = violations(await rpc_status.aio.from_call(call))
    assert reasons == ["INVALID_ARGUMENT"] and field in fields


async def test_unknown_component_is_not_found(monitoring_factory: Any, stub_factory: Any) -> None:
    mon = await monitoring_factory()
    call = stub_factory(mon.port).GetComponentHealth(rr.GetComponentHealthRequest(name="components/nope"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert violations(await rpc_status.aio.from_call(call))[0] == ["COMPONENT_NOT_FOUND"]


async def test_list_method_metrics_counts_the_calls_made(monitoring_factory: Any, stub_factory: Any) -> None:
    mon = await monitoring_factory()
    stub = stub_factory(mon.port)
    scraper = mon.watcher.scrapers["monitoring"]
    while not scraper.history:  # a baseline scrape before the calls, so the window covers them all
        await asyncio.sleep(0.02)
    for _ in range(5):
        await stub.GetComponentHealth(rr.GetComponentHealthRequest(name="components/monitoring"))
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetComponentHealth(rr.GetComponentHealthRequest(name="components/nope"))

    response = await stub.ListMethodMetrics(rr.ListMethodMetricsRequest(parent="services/monitoring"))
    metrics = {m.method: m for m in response.method_metrics}
    get = metrics["GetComponentHealth"]
    assert get.name == "services/monitoring/methodMetrics/GetComponentHealth"
    assert get.service == "agentforge.monitoring.v1.MonitoringService"
    assert (get.requests_total, get.errors_total, dict(get.errors_by_code)) == (8, 3, {"NOT_FOUND": 3})
    assert get.rpc_type == 1 and get.latency_p99.ToNanoseconds() > 0 and get.window.ToNanoseconds() > 0
    assert get.qps > 0 and get.error_rate == pytest.approx(3 / 8)
    assert get.latency_p50.ToNanoseconds() <= get.latency_p90.ToNanoseconds() <= get.latency_p99.ToNanoseconds()
    assert metrics["ListMethodMetrics"].in_flight == 1  # this very call
    assert not any(m.service == "grpc.health.v1.Health" for m in response.method_metrics)

    everything = await stub.ListMethodMetrics(rr.ListMethodMetricsRequest(parent="services/-", page_size=1))
    assert len(everything.method_metrics) == 1 and everything.next_page_token
    for parent, code in (("services/nope", grpc.StatusCode.NOT_FOUND),):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListMethodMetrics(rr.ListMethodMetricsRequest(parent=parent))
        assert info.value.code() == code


async def test_service_without_metrics_endpoint_is_failed_precondition(
    monitoring_factory: Any, stub_factory: Any, peer_inproc: list[Service]
) -> None:
    mon = await monitoring_factory(targets=(Target("training", f"127.0.0.1:{peer_inproc[0].port}"),))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub_factory(mon.port).ListMethodMetrics(rr.ListMethodMetricsRequest(parent="services/training"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_watch_streams_end_with_stream_end_then_unavailable_on_shutdown(monitoring_factory: Any, stub_factory: Any) -> None:
    mon = await monitoring_factory()
    stream = stub_factory(mon.port).WatchSystemHealth(rr.WatchSystemHealthRequest())
    await stream.read()
    alerts = stub_factory(mon.port).WatchAlerts(rr.WatchAlertsRequest())  # no event yet: nothing sent
    await asyncio.sleep(0.2)
    stopping = asyncio.ensure_future(mon.stop(5.0))
    last = await asyncio.wait_for(stream.read(), 3)
    while not last.HasField("stream_end"):  # e.g. the snapshot with monitoring itself NOT_SERVING
        last = await asyncio.wait_for(stream.read(), 3)
    assert last.stream_end.code == grpc.StatusCode.UNAVAILABLE.value[0]  # final message for REST clients
    for call in (stream, alerts):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await stopping


async def test_periodic_snapshots_arrive_every_interval(monitoring_factory: Any, stub_factory: Any) -> None:
    mon = await monitoring_factory()
    stream = stub_factory(mon.port).WatchSystemHealth(
        rr.WatchSystemHealthRequest(interval=duration_pb2.Duration(seconds=1), kinds=[health_pb2.COMPONENT_KIND_EDGE]))
    await stream.read()
    start = time.monotonic()
    second = await asyncio.wait_for(stream.read(), 3)
    assert 0.8 < time.monotonic() - start < 1.6
    assert list(second.changed_components) == []  # nothing changed: a periodic snapshot
    stream.cancel()
