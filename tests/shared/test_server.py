"""Server bootstrap: health, reflection, graceful shutdown, ready line, metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import threading
import time

import grpc
import grpc.aio
import httpx
import pytest
from google.protobuf import empty_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.shared.config import ServerConfig
from services.shared.server import build_server

from .conftest import EchoProcess, EchoServer, rpc
from .echo_service import SERVICE, EchoServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_reports_overall_and_each_service(echo_server: EchoServer, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == SERVING
    try:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        raise AssertionError("unknown service must be NOT_FOUND")
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await health.List(health_pb2.HealthListRequest())
    assert {k: v.status for k, v in listed.statuses.items()} == {"": SERVING, SERVICE: SERVING}
    await echo_server.service.set_serving(SERVICE, False)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert reply.status == NOT_SERVING


async def test_reflection_lists_registered_health_and_reflection_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: set[str] = set()
    async for reply in stub.ServerReflectionInfo(requests()):
        names |= {s.name for s in reply.list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                     "grpc.reflection.v1.ServerReflection"}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_v1_and_v1alpha_describe_every_listed_service(channel: grpc.aio.Channel, version: str) -> None:
    """grpc.reflection.v1 is served too (issue 8); v1 and v1alpha share the wire format."""
    from google.protobuf import descriptor_pb2

    call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    wanted = ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]
    requests = [reflection_pb2.ServerReflectionRequest(list_services="")] + [
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=name) for name in wanted]
    replies = [reply async for reply in call(iter(requests))]
    assert len(replies) == 1 + len(wanted)
    assert "grpc.reflection.v1.ServerReflection" in {s.name for s in replies[0].list_services_response.service}
    for name, reply in zip(wanted, replies[1:]):
        assert not reply.HasField("error_response"), (name, reply.error_response)
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in reply.file_descriptor_response.file_descriptor_proto]
        package, _, service = name.rpartition(".")
        assert any(f.package == package and service in [s.name for s in f.service] for f in files), name


async def test_ready_line_reports_bound_ports(echo_server: EchoServer) -> None:
    line = echo_server.service.ready_line()
    doc = json.loads(line)
    assert doc == {
        "event": "ready", "service": "echo", "grpc_port": echo_server.service.port,
        "metrics_port": echo_server.service.metrics_port, "services": [SERVICE],
    }
    assert doc["grpc_port"] > 0 and doc["metrics_port"] > 0


def test_config_prefers_service_env_over_generic_over_default() -> None:
    env = {"AF_PORT": "5000", "AF_ECHO_PORT": "6000", "AF_GRACE_SECONDS": "2.5",
           "AF_ECHO_KEEPALIVE_PERMIT_WITHOUT_CALLS": "false", "AF_METRICS_PORT": "-1"}
    config = ServerConfig.from_env("echo", env)
    assert (config.port, config.grace_seconds, config.keepalive_permit_without_calls) == (6000, 2.5, False)
    assert not config.metrics_enabled and config.max_concurrent_streams == ServerConfig().max_concurrent_streams
    assert ServerConfig.from_env("other", env).port == 5000
    assert ("grpc.max_receive_message_length", config.max_receive_message_bytes) in config.grpc_options()


@pytest.mark.parametrize("env", [{"AF_PORT": "70000"}, {"AF_GRACE_SECONDS": "soon"}, {"AF_LOG_FORMAT": "xml"}])
def test_config_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        ServerConfig.from_env("echo", env)


async def test_metrics_disabled_with_port_minus_one() -> None:
    service = await build_server(ServerConfig(metrics_port=-1), "echo", EchoServicer().register)
    try:
        assert service.metrics_port is None
        assert '"metrics_port":null' in service.ready_line()
    finally:
        await service.shutdown(0)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _value(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


async def test_metrics_endpoint_counts_all_rpc_kinds_with_codes(echo_server: EchoServer, channel: grpc.aio.Channel) -> None:
    S, I = wrappers_pb2.StringValue, wrappers_pb2.Int64Value
    unary = rpc(channel, "uu", "Unary", S, S)
    assert (await unary(S(value="hi"))).value == "hi"
    for bad in ("not_found", "boom"):
        try:
            await unary(S(value=bad))
        except grpc.aio.AioRpcError:
            pass
    assert [m.value async for m in rpc(channel, "us", "ServerStream", I, I)(I(value=3))] == [0, 1, 2]
    assert (await rpc(channel, "su", "ClientStream", S, I)(iter([S(value="a"), S(value="b")]))).value == 2
    bidi = rpc(channel, "ss", "Bidi", S, S)(iter([S(value="x"), S(value="y")]))
    assert [m.value async for m in bidi] == ["x", "y"]
    bidi_err = rpc(channel, "ss", "Bidi", S, S)(iter([S(value="x"), S(value="boom")]))
    try:
        async for _ in bidi_err:
            pass
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE

    port = echo_server.service.metrics_port
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    s = _samples(text)
    handled = "grpc_server_handled_total"
    base = {"grpc_service": SERVICE}
    assert _value(s, handled, **base, grpc_method="Unary", grpc_type="unary", grpc_code="OK") == 1
    assert _value(s, handled, **base, grpc_method="Unary", grpc_code="NOT_FOUND") == 1
    assert _value(s, handled, **base, grpc_method="Unary", grpc_code="INTERNAL") == 1
    assert _value(s, handled, **base, grpc_method="ServerStream", grpc_type="server_stream", grpc_code="OK") == 1
    assert _value(s, handled, **base, grpc_method="ClientStream", grpc_type="client_stream", grpc_code="OK") == 1
    assert _value(s, handled, **base, grpc_method="Bidi", grpc_type="bidi_stream", grpc_code="OK") == 1
    assert _value(s, handled, **base, grpc_method="Bidi", grpc_type="bidi_stream", grpc_code="UNAVAILABLE") == 1
    assert _value(s, "grpc_server_started_total", **base, grpc_method="Unary", grpc_type="unary") == 3
    assert _value(s, "grpc_server_msg_sent_total", **base, grpc_method="ServerStream") == 3
    assert _value(s, "grpc_server_msg_received_total", **base, grpc_method="ClientStream") == 2
    assert _value(s, "grpc_server_msg_received_total", **base, grpc_method="Bidi") == 4
    assert _value(s, "grpc_server_msg_sent_total", **base, grpc_method="Bidi") == 3
    assert _value(s, "grpc_server_handling_seconds_count", **base, grpc_method="Unary") == 3


async def _wait_status(stub: health_pb2_grpc.HealthStub, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
            if reply.status == want:
                return
        except grpc.aio.AioRpcError:
            pass
        assert time.monotonic() < deadline, f"health never became {want}"
        await asyncio.sleep(0.02)


async def test_sigterm_sets_not_serving_then_drains_open_stream(echo_process: EchoProcess) -> None:
    async with grpc.aio.insecure_channel(echo_process.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        await _wait_status(health, SERVING, 5)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await watch.read()).status == SERVING
        stream = rpc(ch, "us", "Forever", empty_pb2.Empty, wrappers_pb2.Int64Value)(empty_pb2.Empty())
        assert (await stream.read()).value == 0

        sent = time.monotonic()
        echo_process.proc.send_signal(signal.SIGTERM)
        # Health goes NOT_SERVING first, and the watch then ends cleanly.
        assert (await asyncio.wait_for(watch.read(), 2)).status == NOT_SERVING
        assert await asyncio.wait_for(watch.code(), 2) == grpc.StatusCode.OK
        # The open stream keeps flowing during the grace period, then gets a clean status.
        assert (await stream.read()).value >= 1
        try:
            while (await asyncio.wait_for(stream.read(), 5)) is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError:
            pass  # the status is checked below
    code = await stream.code()
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE), code
    assert time.monotonic() - sent < 1.5 + 1.5
    assert echo_process.proc.wait(5) == 0


async def test_sigint_also_stops_gracefully(echo_process: EchoProcess) -> None:
    echo_process.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(echo_process.proc.wait, 5) == 0


def _burst(target: str, calls: int, sent: threading.Event) -> list[str]:
    """``calls`` concurrent Unary calls from a thread of their own (own event loop); the
    status code name of each."""
    async def run() -> list[str]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = rpc(channel, "uu", "Unary", wrappers_pb2.StringValue, wrappers_pb2.StringValue)
            futures = [asyncio.ensure_future(stub(wrappers_pb2.StringValue(value="x"), timeout=60))
                       for _ in range(calls)]
            await asyncio.sleep(0.5)  # let them go out
            sent.set()
            results = await asyncio.gather(*futures, return_exceptions=True)
        return [r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results]

    return asyncio.run(run())


async def test_a_burst_of_calls_the_loop_has_not_taken_yet_is_served_not_cancelled() -> None:
    # Issue 7: grpc-core holds calls that arrive before the server's event loop asks for
    # them; above grpc's default 1,000 pending it refuses a random share, which the
    # client sees as CANCELLED (8-13 % of 2,200 streams opened at once). Here the
    # server's loop is blocked while 1,500 calls arrive: with grpc's defaults about a
    # quarter of the 500 over 1,000 are refused; with the runtime's limits none is.
    config = ServerConfig(grace_seconds=0.5, metrics_port=-1, log_level="WARNING")
    assert config.max_pending_requests >= 5_000 and config.max_pending_requests_hard_limit >= 10_000
    servicer = EchoServicer()
    service = await build_server(config, "echo", servicer.register)
    sent = threading.Event()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            burst = pool.submit(_burst, f"127.0.0.1:{service.port}", 1500, sent)
            sent.wait(60)
            time.sleep(1.0)  # blocks this loop: the server takes no call meanwhile
            codes = await asyncio.wrap_future(burst)
    finally:
        await service.shutdown(0)
    assert codes.count("OK") == 1500, {code: codes.count(code) for code in set(codes)}


def test_pending_request_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_pending_requests_hard_limit"):
        ServerConfig(max_pending_requests=100, max_pending_requests_hard_limit=10).validate()
    assert ServerConfig.from_env("echo", {"AF_MAX_PENDING_REQUESTS": "7"}).max_pending_requests == 7
    # A burst that waits longer than grpc's 30 s for the loop is served late, not dropped.
    options = dict(ServerConfig().grpc_options())
    assert options["grpc.server_max_unrequested_time_in_server"] >= 120
