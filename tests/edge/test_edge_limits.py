"""The edge's resource limits hold, through a real Envoy (small values configured here).

Each limit of :class:`services.launcher.envoy_config.EdgeLimits`: a stream whose client
stops reading is cut after the streaming idle timeout while a stream that keeps moving
is not; connections over the global limit are closed at once; idle connections are
closed; request headers must arrive in time; one HTTP/2 connection gets at most
``max_concurrent_streams`` streams at a time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from buf.validate import validate_pb2
from grpc_health.v1 import health_pb2 as grpc_health_pb2
from grpc_health.v1 import health_pb2_grpc

from agentforge.monitoring.v1 import monitoring_service_pb2_grpc, request_response_pb2 as mon_rr
from agentforge.realtime.v1 import request_response_pb2 as rt_rr
from services.launcher.envoy_config import EdgeLimits
from services.shared.config import ServerConfig
from tests.auth import bearer

from .conftest import EdgeTarget, start_edge_stack
from .test_edge_e2e import read_chunked

pytestmark = pytest.mark.e2e

LIMITS = EdgeLimits(
    max_connections=4,
    max_concurrent_streams=2,
    connection_idle_timeout_s=1.0,
    request_headers_timeout_s=1.0,
    stream_idle_timeout_s=5.0,
    streaming_idle_timeout_s=2.0,
)
WATCH = "/v1/systemHealth:watch"


@pytest.fixture(scope="module")
def limited_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeTarget]:
    """Envoy with :data:`LIMITS`; the double streams a health snapshot every 0.25 s."""
    with ExitStack() as stack:
        yield start_edge_stack(stack, tmp_path_factory.mktemp("limited-edge"), limits=LIMITS,
                               upstream_env={"AF_EDGE_DOUBLE_PERIOD": "0.25"})


def _stat(edge: EdgeTarget, name: str) -> int:
    with urllib.request.urlopen(f"{edge.admin_url}/stats?filter={name}", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key.endswith(name) and value.strip().isdigit():
                return int(value)
    return 0


def _wait_no_connections(edge: EdgeTarget, timeout: float = 10) -> None:
    """Until Envoy has seen every earlier test connection close (they count against the limit)."""
    deadline = time.monotonic() + timeout
    while _stat(edge, "http.edge.downstream_cx_active") > 0:
        assert time.monotonic() < deadline, "earlier connections are still open at the edge"
        time.sleep(0.05)


def _request(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: edge\r\nAuthorization: {bearer()}\r\n\r\n").encode()


def _open_stream(edge: EdgeTarget, *, rcvbuf: int | None = None) -> socket.socket:
    """A REST watch, its response headers read; the caller reads (or not) the body."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", edge.port))
    sock.sendall(_request(WATCH))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed before the response headers: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _closed_within(sock: socket.socket, timeout: float) -> tuple[float, bytes]:
    """Seconds until the peer closed ``sock`` (reading everything on the way), and what came."""
    start = time.monotonic()
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() - start < timeout:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start, data
        if not chunk:
            return time.monotonic() - start, data
        data += chunk
    raise AssertionError(f"still open after {timeout}s; got {len(data)} bytes")


# -- streams ---------------------------------------------------------------------------


def test_a_stream_that_keeps_moving_outlives_the_streaming_idle_timeout(limited_edge: EdgeTarget) -> None:
    with _open_stream(limited_edge) as sock:
        sock.settimeout(2)
        received = b""
        end = time.monotonic() + 3 * LIMITS.streaming_idle_timeout_s
        while time.monotonic() < end:
            chunk = sock.recv(65536)
            assert chunk, "a stream with events every 0.25 s was cut"
            received += chunk
        assert received.count(b'"status"') >= 10


def test_a_rest_stream_whose_client_stops_reading_is_cut_after_the_idle_timeout(tmp_path: Path) -> None:
    # The double streams as fast as it can: the client's buffers and Envoy's fill up,
    # flow control stops the stream, and nothing moves on it any more.
    with ExitStack() as stack:
        edge = start_edge_stack(stack, tmp_path / "edge", limits=LIMITS, upstream_env={"AF_EDGE_DOUBLE_PERIOD": "0"})
        before = _stat(edge, "http.edge.downstream_rq_idle_timeout")
        with _open_stream(edge, rcvbuf=4096) as sock:
            deadline = time.monotonic() + 30
            while _stat(edge, "http.edge.downstream_rq_idle_timeout") == before:
                assert time.monotonic() < deadline, "the stalled stream was never cut"
                time.sleep(0.2)
            # Reading now drains what was buffered, then the connection ends without the
            # last chunk of a complete response.
            _, data = _closed_within(sock, 30)
            assert not data.endswith(b"0\r\n\r\n")


def test_streaming_idle_timeout_default_is_above_every_service_keepalive() -> None:
    # Subscribe heartbeats and WatchSystemHealth snapshots: at most every `lte` seconds
    # (the contracts' validation rules); a healthy quiet stream must never be cut.
    fields = [
        rt_rr.SubscribeRequest.DESCRIPTOR.fields_by_name["heartbeat_interval"],
        mon_rr.WatchSystemHealthRequest.DESCRIPTOR.fields_by_name["interval"],
    ]
    for field in fields:
        rules = field.GetOptions().Extensions[validate_pb2.field]
        longest = rules.duration.lte.seconds
        assert 0 < longest < EdgeLimits().streaming_idle_timeout_s, field.full_name
    assert EdgeLimits().streaming_idle_timeout_s >= 2 * 300
    # A watch with nothing to say sends heartbeats well inside both limits; one without
    # heartbeats is ended by its service first, with a status.
    assert 0 < ServerConfig().stream_heartbeat_s < ServerConfig().stream_max_quiet_s
    assert 0 < ServerConfig().stream_max_quiet_s < EdgeLimits().streaming_idle_timeout_s


async def test_a_quiet_watch_ends_with_unavailable_from_its_service_not_an_edge_reset(tmp_path: Path) -> None:
    # The double sends one snapshot, then nothing: its runtime ends the stream after 1 s
    # of quiet, before the edge's 2 s streaming idle timeout would reset it (which gRPC
    # clients read as INTERNAL and REST clients as a body cut short).
    with ExitStack() as stack:
        edge = start_edge_stack(stack, tmp_path / "edge", limits=LIMITS,
                                upstream_env={"AF_EDGE_DOUBLE_PERIOD": "100", "AF_STREAM_MAX_QUIET_S": "1"})
        async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
            call = monitoring_service_pb2_grpc.MonitoringServiceStub(channel).WatchSystemHealth(
                mon_rr.WatchSystemHealthRequest())
            messages = [m async for m in _until_error(call)]
            assert await call.code() == grpc.StatusCode.UNAVAILABLE, await call.details()
            assert messages[-1].stream_end.code == grpc.StatusCode.UNAVAILABLE.value[0]
        with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
            sock.sendall(_request(WATCH))
            resp = read_chunked(sock)
        assert resp.complete, "the body must end with its last chunk, not a reset"
        last = json.loads(resp.body.splitlines()[-1])
        assert last["streamEnd"]["code"] == grpc.StatusCode.UNAVAILABLE.value[0], last
        assert resp.trailers["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
        assert _stat(edge, "http.edge.downstream_rq_idle_timeout") == 0


async def test_quiet_watches_stay_open_through_the_edge_on_heartbeats(tmp_path: Path) -> None:
    # Heartbeats every 0.5 s; the services' quiet limit is 1 s and the edge's streaming
    # idle timeout 2 s: for 3 idle timeouts a watch with nothing to say stays open over
    # gRPC, REST (NDJSON) and grpc.health.v1 Watch, and nothing is cut by the edge.
    seconds = 3 * LIMITS.streaming_idle_timeout_s
    with ExitStack() as stack:
        edge = start_edge_stack(stack, tmp_path / "edge", limits=LIMITS,
                                upstream_env={"AF_STREAM_HEARTBEAT_S": "0.5", "AF_STREAM_MAX_QUIET_S": "1"})
        async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
            alerts = monitoring_service_pb2_grpc.MonitoringServiceStub(channel).WatchAlerts(mon_rr.WatchAlertsRequest())
            health = health_pb2_grpc.HealthStub(channel).Watch(grpc_health_pb2.HealthCheckRequest(service=""))
            try:
                beats, statuses = await asyncio.gather(_read_for(alerts, seconds), _read_for(health, seconds))
            finally:
                alerts.cancel()
                health.cancel()
            assert len(beats) >= 4 and all(b.HasField("heartbeat") and not b.HasField("alert") for b in beats)
            assert len(statuses) >= 4
            assert {s.status for s in statuses} == {grpc_health_pb2.HealthCheckResponse.SERVING}

        with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
            sock.sendall(_request("/v1/alerts:watch"))
            lines: list[dict[str, Any]] = []

            def on_chunk(resp: Any) -> None:
                lines[:] = [json.loads(line) for line in resp.body.splitlines() if line.strip()]
                if len(lines) >= 8:  # 4 s: twice the idle timeout
                    sock.shutdown(socket.SHUT_RDWR)

            resp = read_chunked(sock, on_chunk)
        assert resp.status_line.startswith("HTTP/1.1 200"), resp.status_line
        assert len(lines) >= 8 and all(set(line) == {"heartbeat"} for line in lines), lines
        assert _stat(edge, "http.edge.downstream_rq_idle_timeout") == 0


async def _read_for(call: Any, seconds: float) -> list[Any]:
    """Messages of a stream read until ``seconds`` passed; fails if it ends first."""
    got: list[Any] = []
    end = time.monotonic() + seconds
    async with asyncio.timeout(seconds + 10):
        while time.monotonic() < end:
            message = await call.read()
            assert message is not grpc.aio.EOF, f"the stream ended: {await call.code()} {await call.details()}"
            got.append(message)
    return got


async def _until_error(call: Any) -> AsyncIterator[Any]:
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError:
        return


async def test_one_http2_connection_gets_at_most_max_concurrent_streams(limited_edge: EdgeTarget) -> None:
    async with grpc.aio.insecure_channel(limited_edge.grpc_target) as channel:
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
        calls = [stub.WatchSystemHealth(mon_rr.WatchSystemHealthRequest()) for _ in range(3)]
        try:
            first = [asyncio.ensure_future(call.read()) for call in calls]
            done, pending = await asyncio.wait(first, timeout=3)
            assert len(done) == LIMITS.max_concurrent_streams, "more streams than the limit ran at once"
            (waiting,) = pending
            # One stream ends: the queued one starts on the same connection.
            next(c for c, f in zip(calls, first) if f in done).cancel()
            await asyncio.wait_for(waiting, timeout=5)
        finally:
            for call in calls:
                call.cancel()


# -- connections -----------------------------------------------------------------------


def test_connections_over_the_global_limit_are_closed_at_once(limited_edge: EdgeTarget) -> None:
    _wait_no_connections(limited_edge)
    before = _stat(limited_edge, "downstream_global_cx_overflow")
    with ExitStack() as stack:
        # Streams keep their connections busy, so the idle timeout leaves them alone.
        held = [stack.enter_context(_open_stream(limited_edge)) for _ in range(LIMITS.max_connections)]
        assert len(held) == LIMITS.max_connections
        over = stack.enter_context(socket.create_connection(("127.0.0.1", limited_edge.port), timeout=5))
        took, data = _closed_within(over, 5)
        assert data == b"" and took < 1.0
        assert _stat(limited_edge, "downstream_global_cx_overflow") == before + 1
        held.pop().close()
        time.sleep(0.2)  # Envoy sees the close
        # A slot is free again: a new connection is served.
        with socket.create_connection(("127.0.0.1", limited_edge.port), timeout=5) as again:
            again.sendall(_request("/v1/systemHealth"))
            assert again.recv(64).startswith(b"HTTP/1.1 200")


def test_an_idle_connection_is_closed_after_the_idle_timeout(limited_edge: EdgeTarget) -> None:
    _wait_no_connections(limited_edge)
    with socket.create_connection(("127.0.0.1", limited_edge.port), timeout=5) as sock:
        took, data = _closed_within(sock, 10)  # never sent a byte
    assert data == b"" and 0.8 <= took <= 5, took
    with socket.create_connection(("127.0.0.1", limited_edge.port), timeout=5) as sock:
        sock.sendall(_request("/v1/systemHealth"))  # one request, then the connection idles
        took, data = _closed_within(sock, 15)
    assert data.startswith(b"HTTP/1.1 200") and b'"components"' in data  # served, then kept open
    assert b"connection: close" not in data.lower()
    # After a request Envoy drains the idle connection: idle timeout + drain_timeout (5 s)
    # + the delayed close (1 s).
    assert 0.8 <= took <= LIMITS.connection_idle_timeout_s + 5 + 1 + 2, took


def test_request_headers_must_arrive_within_the_headers_timeout(limited_edge: EdgeTarget) -> None:
    _wait_no_connections(limited_edge)
    with socket.create_connection(("127.0.0.1", limited_edge.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/systemHealth HTTP/1.1\r\nHost: edge\r\n")  # and never the blank line
        took, data = _closed_within(sock, 10)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert 0.8 <= took <= 5, took


def test_a_rest_body_under_8_mib_still_reaches_the_service_with_32_kib_connection_buffers(
    limited_edge: EdgeTarget,
) -> None:
    # Connection buffers are 32 KiB (what a client that stops reading can pin in Envoy);
    # the REST route's buffer filter and transcoder keep their own 8 MiB body limit.
    import httpx

    big = b'{"displayName":"' + b"a" * (6 * 1024 * 1024) + b'"}'
    with httpx.Client(base_url=limited_edge.url, timeout=30) as rest:
        resp = rest.post("/v1/alertRules", content=big, headers={"content-type": "application/json"})
    body = resp.json()
    assert resp.status_code != 413 and body.get("code") != 8, (resp.status_code, str(body)[:200])
    # The service answered (the double validates, then has no CreateAlertRule).
    assert resp.status_code in (400, 501), (resp.status_code, str(body)[:200])
