"""End to end through a real Envoy: REST, grpc-web, native gRPC, reflection, streams.

All traffic goes to the ``edge`` fixture (127.0.0.1). Behind it today is the edge test
double (tests/edge/upstream_double.py); the tests only rely on what the API contract
says about ``MonitoringService`` health RPCs, so they can be re-pointed at the mesh.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import grpc.aio
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from agentforge.monitoring.v1 import health_pb2, monitoring_service_pb2_grpc, request_response_pb2

from .conftest import GRPCURL, EdgeTarget
from tests.support import grpc_web_frame, grpc_web_frames
from tests.auth import bearer, grpcurl_auth

pytestmark = pytest.mark.e2e

MONITORING = "agentforge.monitoring.v1.MonitoringService"
ORIGIN = "http://localhost:5173"


@pytest.fixture
def rest(edge: EdgeTarget) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=10) as client:
        yield client


def assert_status_body(resp: httpx.Response, http_status: int, code: int) -> dict:
    """A google.rpc.Status JSON body with the expected HTTP status and code."""
    assert resp.status_code == http_status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body.get("details", []), list)
    return body


# --- REST ---------------------------------------------------------------------------


def test_rest_get_system_health_is_lower_camel_case_json(rest: httpx.Client) -> None:
    resp = rest.get("/v1/systemHealth")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["x-request-id"]
    body = resp.json()
    assert body["status"] == "HEALTH_STATUS_SERVING"
    assert "checkTime" in body and "check_time" not in body
    component = body["components"][0]
    assert {"name", "kind", "status", "latency", "lastChangeTime", "lastCheckTime"} <= component.keys()
    assert not [key for key in component if "_" in key]
    # the JSON is the proto's canonical mapping
    json_format.ParseDict(body, health_pb2.SystemHealth())


def test_rest_enum_query_parameters_are_case_insensitive(rest: httpx.Client) -> None:
    assert rest.get("/v1/systemHealth", params={"kinds": "component_kind_edge"}).status_code == 200


def test_rest_protovalidate_failure_is_400_with_field_violations(rest: httpx.Client) -> None:
    resp = rest.get("/v1/systemHealth", params=[("kinds", "COMPONENT_KIND_SERVICE")] * 2)
    body = assert_status_body(resp, 400, 3)
    by_type = {d["@type"].rpartition("/")[2]: d for d in body["details"]}
    assert [v["field"] for v in by_type["google.rpc.BadRequest"]["fieldViolations"]] == ["kinds"]
    assert by_type["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"


def test_rest_unknown_query_parameter_is_400(rest: httpx.Client) -> None:
    body = assert_status_body(rest.get("/v1/systemHealth", params={"bogus": "1"}), 400, 3)
    assert "bogus" in body["message"]


def test_rest_malformed_json_body_is_400(rest: httpx.Client) -> None:
    resp = rest.post("/v1/alertRules", content=b'{"displayName":', headers={"content-type": "application/json"})
    assert_status_body(resp, 400, 3)


def test_rest_body_field_of_the_wrong_type_is_400(rest: httpx.Client) -> None:
    assert_status_body(rest.post("/v1/alertRules", json={"severity": {"not": "an enum"}}), 400, 3)


def assert_unknown_field(resp: httpx.Response, field: str) -> None:
    """The edge's own 400 (envoy/rest_strict_body.lua): a BadRequest naming ``field``."""
    body = assert_status_body(resp, 400, 3)
    assert field in body["message"]
    by_type = {d["@type"].rpartition("/")[2]: d for d in body["details"]}
    (violation,) = by_type["google.rpc.BadRequest"]["fieldViolations"]
    assert violation["field"] == field
    assert by_type["google.rpc.ErrorInfo"]["reason"] == "UNKNOWN_FIELD"
    # the message is a real google.rpc.Status, details included
    json_format.ParseDict(body, status_pb2.Status())


def assert_reached_the_service(resp: httpx.Response) -> None:
    """Answered by the upstream (validation or UNIMPLEMENTED), not by the edge's check."""
    assert resp.status_code in (400, 501), resp.text
    reasons = [d.get("reason") for d in resp.json().get("details", [])]
    assert "UNKNOWN_FIELD" not in reasons, resp.text
    assert resp.json()["code"] in (3, 12), resp.text


def test_rest_unknown_body_field_is_400_naming_the_field(rest: httpx.Client) -> None:
    """Envoy's transcoder drops unknown JSON body fields; the Lua filter before it
    rejects them instead (envoy/README.md)."""
    resp = rest.post("/v1/alertRules", json={"displayName": "x", "noSuchField": 1})
    assert_unknown_field(resp, "alertRule.noSuchField")


def test_rest_unknown_nested_body_field_is_400_naming_its_path(rest: httpx.Client) -> None:
    job = {"displayName": "j", "spec": {"model": {"layers": 2, "bogus": {"x": [1]}}}}
    assert_unknown_field(rest.post("/v1/trainingJobs", json=job), "trainingJob.spec.model.bogus")
    # body "*": the request message's own fields
    assert_unknown_field(rest.post("/v1/trainingJobs/j1:cancel", json={"nope": None}), "nope")
    # a client stream over REST is a JSON array of messages
    assert_unknown_field(rest.post("/v1/modelArtifacts:upload", json=[{"bogus": 1}]), "[0].bogus")


def test_rest_known_body_fields_still_reach_the_service(rest: httpx.Client) -> None:
    # lowerCamelCase and proto names are both accepted, nested ones included
    job = {"displayName": "j", "spec": {"model": {"layers": 2}, "batch_size": 4}}
    assert_reached_the_service(rest.post("/v1/trainingJobs", json=job))
    assert_reached_the_service(rest.post("/v1/alertRules", json={"display_name": "x"}))
    # google.protobuf.Struct holds arbitrary JSON: not checked inside
    run = {"parameters": {"anything": {"goes": [1, {"here": True}]}}}
    assert_reached_the_service(rest.post("/v1/phases/p1:start", json=run))
    # escapes in keys are decoded before the check
    assert_reached_the_service(rest.post("/v1/alertRules", content=rb'{"display\u004eame":"x"}',
                                         headers={"content-type": "application/json"}))


def test_rest_unknown_path_is_404(rest: httpx.Client) -> None:
    assert_status_body(rest.get("/v1/noSuchThing"), 404, 5)
    # "/" is the dashboard's page (or 503 "not built"); any other unknown path is a 404.
    assert_status_body(rest.get("/no/such/page.html"), 404, 5)


def test_rest_wrong_method_is_404(rest: httpx.Client) -> None:
    assert_status_body(rest.put("/v1/systemHealth", json={}), 404, 5)
    assert_status_body(rest.delete("/v1/systemHealth"), 404, 5)


def test_rest_oversized_body_is_413(rest: httpx.Client) -> None:
    big = b'{"displayName":"' + b"a" * (9 * 1024 * 1024) + b'"}'
    resp = rest.post("/v1/alertRules", content=big, headers={"content-type": "application/json"})
    assert_status_body(resp, 413, 8)


# --- grpc-web and CORS ----------------------------------------------------------------


def grpc_web_post(rest: httpx.Client, method: str, message: bytes) -> httpx.Response:
    return rest.post(
        f"/{MONITORING}/{method}",
        content=grpc_web_frame(message),
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                 "x-user-agent": "grpc-web-javascript/0.1", "origin": ORIGIN},
    )


def test_grpc_web_binary_unary_returns_message_and_ok_trailer(rest: httpx.Client) -> None:
    request = request_response_pb2.GetSystemHealthRequest().SerializeToString()
    resp = grpc_web_post(rest, "GetSystemHealth", request)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/grpc-web+proto"
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    messages, trailers = grpc_web_frames(resp.content)
    assert trailers["grpc-status"] == "0"
    (message,) = messages
    health = health_pb2.SystemHealth.FromString(message)
    assert health.status == health_pb2.HEALTH_STATUS_SERVING
    assert health.components


def test_grpc_web_validation_error_carries_rich_status(rest: httpx.Client) -> None:
    request = request_response_pb2.GetSystemHealthRequest(kinds=[1, 1]).SerializeToString()
    resp = grpc_web_post(rest, "GetSystemHealth", request)
    assert resp.status_code == 200  # grpc-web reports errors in grpc-status, not HTTP
    messages, trailers = grpc_web_frames(resp.content)
    fields = {**{k.lower(): v for k, v in resp.headers.items()}, **trailers}
    assert messages == []
    assert fields["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0])
    raw = fields["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    bad = next(d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
    violations = error_details_pb2.BadRequest()
    bad.Unpack(violations)
    assert [v.field for v in violations.field_violations] == ["kinds"]


def test_a_malformed_grpc_timeout_is_invalid_argument_and_spoils_no_later_call(rest: httpx.Client) -> None:
    """grpc-core answered ``grpc-timeout: abc`` with INTERNAL, and after it valid calls of
    every client on the same Envoy->service connection failed the same way ("Error
    parsing 'grpc-timeout' metadata"). The edge answers it; later calls are unharmed."""
    request = request_response_pb2.GetSystemHealthRequest().SerializeToString()

    def call(timeout: str) -> dict[str, str]:
        resp = rest.post(f"/{MONITORING}/GetSystemHealth", content=grpc_web_frame(request),
                         headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                                  "grpc-timeout": timeout})
        _, trailers = grpc_web_frames(resp.content)
        return {**{k.lower(): v for k, v in resp.headers.items()}, **trailers}

    for bad in ("abc", "-5S", "1.5S"):
        fields = call(bad)
        assert fields["grpc-status"] == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), (bad, fields)
        raw = fields["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    codes = [call("5S")["grpc-status"] for _ in range(12)]
    assert codes == ["0"] * 12, codes


def test_grpc_web_unknown_method_is_unimplemented(rest: httpx.Client) -> None:
    resp = rest.post("/no.such.v1.Service/Method", content=b"\0\0\0\0\0",
                     headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"})
    assert resp.headers["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])


def test_cors_preflight_for_grpc_web_passes(rest: httpx.Client) -> None:
    resp = rest.options(f"/{MONITORING}/GetSystemHealth", headers={
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-grpc-web,content-type",
    })
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert {"x-grpc-web", "content-type", "x-user-agent", "grpc-timeout", "authorization"} <= allowed
    assert "POST" in resp.headers["access-control-allow-methods"]
    exposed = {h.strip() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed


def test_cors_preflight_from_a_foreign_origin_is_not_allowed(rest: httpx.Client) -> None:
    resp = rest.options("/v1/systemHealth", headers={
        "origin": "http://evil.example", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in resp.headers


def test_cors_on_a_rest_response(rest: httpx.Client) -> None:
    resp = rest.get("/v1/systemHealth", headers={"origin": ORIGIN})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN


# --- native gRPC and reflection ---------------------------------------------------------


async def test_native_grpc_through_the_edge(edge: EdgeTarget) -> None:
    async with grpc.aio.insecure_channel(edge.grpc_target) as channel:
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
        call = stub.GetSystemHealth(request_response_pb2.GetSystemHealthRequest(), timeout=5)
        health = await call
        assert health.status == health_pb2.HEALTH_STATUS_SERVING
        assert dict(await call.initial_metadata()).get("x-request-id")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSystemHealth(request_response_pb2.GetSystemHealthRequest(kinds=[1, 1]), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        unknown = channel.unary_unary("/no.such.v1.Service/Method")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unknown(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpcurl_lists_and_describes_through_the_edge_without_protos(edge: EdgeTarget) -> None:
    listed = subprocess.run([str(GRPCURL), "-plaintext", *grpcurl_auth(), edge.grpc_target, "list"],
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert MONITORING in services and "grpc.health.v1.Health" in services

    described = subprocess.run([str(GRPCURL), "-plaintext", *grpcurl_auth(), edge.grpc_target, "describe", MONITORING],
                               capture_output=True, text=True, timeout=30)
    assert described.returncode == 0, described.stderr
    assert f"{MONITORING} is a service" in described.stdout
    assert "rpc WatchSystemHealth ( .agentforge.monitoring.v1.WatchSystemHealthRequest ) " \
           "returns ( stream .agentforge.monitoring.v1.SystemHealth )" in described.stdout


# --- streams --------------------------------------------------------------------------


def test_rest_server_stream_is_ndjson_and_arrives_incrementally(rest: httpx.Client) -> None:
    arrivals: list[tuple[float, dict]] = []
    with rest.stream("GET", "/v1/systemHealth:watch") as resp:
        assert resp.status_code == 200
        assert resp.headers["transfer-encoding"] == "chunked"
        for line in resp.iter_lines():
            if line:
                arrivals.append((time.monotonic(), json.loads(line)))  # one object per line
            if len(arrivals) == 3:
                break
    (t0, first), _, (t2, third) = arrivals
    assert first["status"] == "HEALTH_STATUS_SERVING"
    # the first snapshot was readable long before the third one was produced
    assert t2 - t0 >= 0.3
    assert [a[1]["checkTime"] for a in arrivals] == sorted({a[1]["checkTime"] for a in arrivals})


def test_rest_stream_failing_before_its_first_message_gets_a_real_http_status(rest: httpx.Client) -> None:
    resp = rest.get("/v1/systemHealth:watch", params=[("kinds", "COMPONENT_KIND_SERVICE")] * 2)
    body = assert_status_body(resp, 400, 3)
    assert any(d["@type"].endswith("google.rpc.BadRequest") for d in body["details"])


@dataclass
class ChunkedResponse:
    status_line: str
    headers: dict[str, str]
    body: bytes = b""
    trailers: dict[str, str] = field(default_factory=dict)
    complete: bool = False


def read_chunked(sock: socket.socket,
                 on_chunk: Callable[[ChunkedResponse], None] | None = None) -> ChunkedResponse:
    """Read an HTTP/1.1 chunked response, trailers included (httpx drops trailers)."""
    f = sock.makefile("rb")
    status_line = f.readline().decode().strip()
    headers: dict[str, str] = {}
    while (line := f.readline().decode()) not in ("\r\n", ""):
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    resp = ChunkedResponse(status_line, headers)
    while True:
        size_line = f.readline()
        if not size_line:
            return resp  # connection closed mid-body: an incomplete response
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        resp.body += f.read(size)
        f.read(2)
        if on_chunk is not None:
            on_chunk(resp)
    while (line := f.readline().decode()) not in ("\r\n", ""):
        key, _, value = line.partition(":")
        resp.trailers[key.strip().lower()] = value.strip()
    resp.complete = True
    return resp


def test_sigterm_ends_an_open_rest_stream_cleanly_with_status_trailers(private_edge: EdgeTarget) -> None:
    signalled: list[float] = []

    def after_two(resp: ChunkedResponse) -> None:
        if not signalled and resp.body.count(b"\n") >= 2:
            signalled.append(time.monotonic())
            private_edge.signal_monitoring(signal.SIGTERM)

    with socket.create_connection(("127.0.0.1", private_edge.port), timeout=10) as sock:
        sock.sendall((b"GET /v1/systemHealth:watch HTTP/1.1\r\nHost: edge\r\nTE: trailers\r\n"
                     + f"authorization: {bearer()}\r\n\r\n".encode()))
        resp = read_chunked(sock, after_two)
    ended = time.monotonic()
    assert resp.status_line.startswith("HTTP/1.1 200")
    assert resp.complete, "the chunked body must end with the last-chunk, not a reset"
    assert ended - signalled[0] < private_edge.grace_seconds
    *messages, last = [json.loads(line) for line in resp.body.splitlines()]
    assert messages and all(m["status"] for m in messages)
    # The last NDJSON line is the final status (stream_end), for clients without trailers.
    assert last["streamEnd"]["code"] == grpc.StatusCode.UNAVAILABLE.value[0], last
    assert last["streamEnd"]["message"] == "server shutting down"
    assert any(d["@type"].endswith("google.rpc.ErrorInfo") for d in last["streamEnd"]["details"])
    assert resp.trailers["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
    assert resp.trailers["grpc-message"]


def test_sigkilled_upstream_leaves_a_rest_stream_without_stream_end_or_last_chunk(
    private_edge: EdgeTarget,
) -> None:
    killed: list[float] = []

    def after_two(resp: ChunkedResponse) -> None:
        if not killed and resp.body.count(b"\n") >= 2:
            killed.append(time.monotonic())
            private_edge.signal_monitoring(signal.SIGKILL)

    with socket.create_connection(("127.0.0.1", private_edge.port), timeout=10) as sock:
        sock.sendall((b"GET /v1/systemHealth:watch HTTP/1.1\r\nHost: edge\r\nTE: trailers\r\n"
                     + f"authorization: {bearer()}\r\n\r\n".encode()))
        resp = read_chunked(sock, after_two)
    assert killed and resp.status_line.startswith("HTTP/1.1 200")
    assert not resp.complete, "a killed upstream must not look like a clean end"
    assert not resp.trailers
    lines = [json.loads(line) for line in resp.body.splitlines() if line.strip()]
    assert len(lines) >= 2 and all("streamEnd" not in line for line in lines), lines


def test_rest_gets_a_json_status_when_the_upstream_is_gone(private_edge: EdgeTarget) -> None:
    private_edge.signal_monitoring(signal.SIGTERM)
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=private_edge.url, timeout=10) as client:
        while (resp := client.get("/v1/systemHealth")).status_code == 200:
            assert time.monotonic() < deadline, "upstream never went away"
            time.sleep(0.05)
    assert_status_body(resp, 503, 14)


async def test_sigterm_ends_an_open_grpc_stream_with_unavailable(private_edge: EdgeTarget) -> None:
    async with grpc.aio.insecure_channel(private_edge.grpc_target) as channel:
        stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
        call = stub.WatchSystemHealth(request_response_pb2.WatchSystemHealthRequest())
        received = 0
        signalled = 0.0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                received += 1
                if received == 2:
                    signalled = time.monotonic()
                    private_edge.signal_monitoring(signal.SIGTERM)
        assert time.monotonic() - signalled < private_edge.grace_seconds
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert received >= 2
