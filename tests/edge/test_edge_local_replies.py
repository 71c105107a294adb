"""Envoy's own replies to gRPC and grpc-web clients, and unary deadlines (issue 8).

Every reply the edge makes itself — no route, a gRPC request that is not a POST,
grpc-web-text that is not base64, a rejected token, an upstream that is gone, a call
over the edge's time limit — carries ``grpc-status-details-bin``: a google.rpc.Status
whose ErrorInfo has domain agentforge.dev and a reason from the catalogue, and a
gRPC code that is a client's-mistake code for a client's mistake (never INTERNAL or
UNKNOWN). A unary call's own ``grpc-timeout`` is honoured beyond the edge's default
unary limit, up to ``EdgeLimits.grpc_timeout_max_s``.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest
from google.rpc import status_pb2

from agentforge.monitoring.v1 import request_response_pb2 as mon_rr
from services.launcher.envoy_config import EdgeLimits
from services.shared.auth import mint_token
from services.shared.errors import DOMAIN, REASONS
from tests import auth
from tests.support import error_details, grpc_web_frame

from .conftest import EdgeTarget, start_edge_stack

pytestmark = pytest.mark.e2e

MONITORING = "agentforge.monitoring.v1.MonitoringService"


def rich(source: grpc.aio.AioRpcError | dict[str, str]) -> tuple[int, str, str]:
    """``(grpc code, ErrorInfo reason, message)`` of a failed call, checking that the
    status details are present, in our domain and in the catalogue."""
    if isinstance(source, dict):
        raw = source["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        code = int(source["grpc-status"])
        assert status.code == code, (status, source)
        info, _ = error_details(status)
        message = source.get("grpc-message", "")
    else:
        info, _ = error_details(source)
        code = source.code().value[0]
        message = source.details() or ""
    assert info is not None and info.domain == DOMAIN and info.reason in REASONS, info
    return code, info.reason, message


async def _call(channel: grpc.aio.Channel, method: str, request: bytes = b"", **kwargs: object) -> bytes:
    call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return await call(request, **kwargs)  # type: ignore[arg-type]


def _h2(edge: EdgeTarget, method: str, path: str, *extra: str) -> dict[str, str]:
    """Headers of an HTTP/2 (h2c) request made with curl, which can send any method."""
    out = subprocess.run(
        ["curl", "-s", "-D", "-", "-o", "/dev/null", "--http2-prior-knowledge", "-X", method,
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-H", f"authorization: {auth.bearer()}", *extra, edge.url + path],
        capture_output=True, text=True, timeout=30, check=True)
    lines = [line.split(":", 1) for line in out.stdout.splitlines()[1:] if ":" in line]
    return {k.strip().lower(): v.strip() for k, v in lines}


# --- Envoy's own replies ------------------------------------------------------------------


async def test_a_method_the_edge_has_no_route_for_is_unimplemented_with_route_not_found(edge: EdgeTarget) -> None:
    async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(channel, "/agentforge.nothing.v1.NoService/NoMethod")
    assert rich(err.value)[:2] == (grpc.StatusCode.UNIMPLEMENTED.value[0], "ROUTE_NOT_FOUND")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_a_grpc_request_that_is_not_a_post_is_unimplemented_never_internal(edge: EdgeTarget, method: str) -> None:
    """Issue 8: the service reset a GET (INTERNAL / UNAVAILABLE at the client)."""
    headers = _h2(edge, method, f"/{MONITORING}/GetSystemHealth")
    code, reason, message = rich(headers)
    assert (code, reason) == (grpc.StatusCode.UNIMPLEMENTED.value[0], "ROUTE_NOT_FOUND"), headers
    assert "POST" in message
    with httpx.Client(base_url=edge.url, timeout=10) as client:  # grpc-web over HTTP/1.1 alike
        resp = client.request(method, f"/{MONITORING}/GetSystemHealth",
                               headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"})
    assert rich(dict(resp.headers))[:2] == (grpc.StatusCode.UNIMPLEMENTED.value[0], "ROUTE_NOT_FOUND")


@pytest.mark.parametrize("body", [b"!!!not base64***", b"abc", base64.b64encode(grpc_web_frame(b""))[:-1]])
def test_grpc_web_text_that_is_not_base64_is_invalid_argument_never_internal(edge: EdgeTarget, body: bytes) -> None:
    """Issue 8: grpc_web's own 400 became INTERNAL."""
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        resp = client.post(f"/{MONITORING}/GetSystemHealth", content=body,
                           headers={"content-type": "application/grpc-web-text", "x-grpc-web": "1"})
    assert resp.status_code == 200, resp.headers
    code, reason, message = rich(dict(resp.headers))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "MALFORMED_REQUEST"), resp.headers
    assert "base64" in message
    good = base64.b64encode(grpc_web_frame(mon_rr.GetSystemHealthRequest().SerializeToString()))
    with httpx.Client(base_url=edge.url, timeout=10) as client:  # the well-formed call still works
        ok = client.post(f"/{MONITORING}/GetSystemHealth", content=good,
                         headers={"content-type": "application/grpc-web-text", "x-grpc-web": "1"})
    assert ok.status_code == 200 and ok.headers.get("grpc-status", "0") == "0" and ok.content, ok.headers


@pytest.mark.parametrize(("token", "reason"), [
    (None, "TOKEN_REQUIRED"),
    ("expired", "TOKEN_EXPIRED"),
    ("Bearer not-a-jwt", "TOKEN_INVALID"),
    ("wrong-audience", "TOKEN_INVALID"),
])
async def test_rejected_tokens_are_unauthenticated_with_the_token_reason(
        edge: EdgeTarget, token: str | None, reason: str) -> None:
    if token == "expired":
        token = "Bearer " + mint_token("admin", subject="expired-user", issued_at=time.time() - 7200, ttl_s=60)
    elif token == "wrong-audience":
        token = "Bearer " + mint_token("admin", subject="elsewhere", aud="another-audience")
    metadata = (("authorization", token),) if token else ()
    async with auth.anonymous_channel(edge.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(channel, f"/{MONITORING}/GetSystemHealth", mon_rr.GetSystemHealthRequest().SerializeToString(),
                        metadata=metadata, timeout=10)
    assert rich(err.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED.value[0], reason), err.value.details()


async def test_an_upstream_that_is_gone_is_unavailable_with_details(private_edge: EdgeTarget) -> None:
    private_edge.signal_monitoring(signal.SIGKILL)
    deadline = time.monotonic() + 15
    async with grpc.aio.insecure_channel(private_edge.grpc_target) as channel:
        while True:
            try:
                await _call(channel, f"/{MONITORING}/GetSystemHealth", timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert rich(exc)[:2] == (grpc.StatusCode.UNAVAILABLE.value[0], "UNAVAILABLE"), exc
                return
            assert time.monotonic() < deadline, "the upstream never went away"
            time.sleep(0.05)


# --- unary deadlines ------------------------------------------------------------------------

#: Small limits so the tests take seconds: no grpc-timeout -> 1 s; with one, at most 4 s.
LIMITS = EdgeLimits(unary_timeout_s=1.0, grpc_timeout_max_s=4.0)


@pytest.fixture(scope="module")
def timed_edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeTarget]:
    with ExitStack() as stack:
        yield start_edge_stack(stack, Path(tmp_path_factory.mktemp("timed-edge")), limits=LIMITS)


SLOW_CALLS = {  # a read route (retried Get*) and another unary route
    "read": (f"/{MONITORING}/GetComponentHealth",
             lambda ms: mon_rr.GetComponentHealthRequest(name=f"components/slow-{ms}").SerializeToString()),
    "write": (f"/{MONITORING}/AcknowledgeAlert",
              lambda ms: mon_rr.AcknowledgeAlertRequest(name=f"alerts/slow-{ms}",
                                                        acknowledged_by="ops").SerializeToString()),
}


@pytest.mark.parametrize("route", sorted(SLOW_CALLS))
async def test_a_unary_call_s_own_grpc_timeout_is_honoured_up_to_the_edge_maximum(
        timed_edge: EdgeTarget, route: str) -> None:
    """Issue 8: unary calls were cut at the edge's 30 s whatever deadline the client set."""
    method, request = SLOW_CALLS[route]
    async with grpc.aio.insecure_channel(timed_edge.grpc_target) as channel:
        # Longer than the unary limit (1 s) but within the client's deadline: answered.
        assert await _call(channel, method, request(2000), timeout=30)
        # Without a deadline the edge's unary limit applies: DEADLINE_EXCEEDED, never
        # UNAVAILABLE (which clients retry).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(channel, method, request(2000))
        assert rich(err.value)[:2] == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "DEADLINE_EXCEEDED")
        # A deadline past the maximum (4 s) is cut there, long before the call (30 s) or
        # the client's deadline (60 s) would end it.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(channel, method, request(30_000), timeout=60)
        assert rich(err.value)[:2] == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "DEADLINE_EXCEEDED")
        assert time.monotonic() - started < 25, "cut at the edge's maximum, not by the call or the client"


@pytest.mark.parametrize(("token", "reason"), [
    (None, "TOKEN_REQUIRED"),
    ("expired", "TOKEN_EXPIRED"),
    ("Bearer not-a-jwt", "TOKEN_INVALID"),
    ("wrong-audience", "TOKEN_INVALID"),
])
def test_rest_clients_get_the_same_token_reasons(edge: EdgeTarget, token: str | None, reason: str) -> None:
    if token == "expired":
        token = "Bearer " + mint_token("admin", subject="expired-user", issued_at=time.time() - 7200, ttl_s=60)
    elif token == "wrong-audience":
        token = "Bearer " + mint_token("admin", subject="elsewhere", aud="another-audience")
    with auth.anonymous_http(base_url=edge.url, timeout=10) as client:
        resp = client.get("/v1/systemHealth", headers={"authorization": token} if token else {})
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    (info,) = [d for d in body["details"] if d["@type"].endswith("ErrorInfo")]
    assert (info["domain"], info["reason"]) == (DOMAIN, reason), body
