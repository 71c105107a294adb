"""Fuzz every RPC (native gRPC) and every REST route through the edge (issue 8).

Requests are built from the message descriptors — no generator written per message:
:func:`message_strategy` turns any descriptor into a Hypothesis strategy (valid,
boundary and garbage values per field type, nested messages, repeated and map fields,
unknown enum numbers), and raw random bytes go in as protobuf and as JSON bodies. REST
requests come from each method's ``google.api.http`` binding: path templates filled with
plausible and odd segments (``%ff``, ``%00``, ``..``, long, non-ASCII), query strings
from the request's fields (with ``+`` and percent encodings) and unknown parameters.

The only answers allowed: OK, or a client-error status (gRPC: INVALID_ARGUMENT,
NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, …; REST: 2xx or
4xx) carrying a ``google.rpc.Status`` whose ErrorInfo has domain ``agentforge.dev`` and
a reason from the catalogue. Never INTERNAL, UNKNOWN, DATA_LOSS, a 5xx or a crashed
service (every service must still answer health checks at the end).

Budget and seed are fixed for CI (``AF_FUZZ_EXAMPLES`` per method, default 4;
``derandomize``): the same requests every run. Raise the budget to hunt; a failure found
becomes a plain regression test (tests/edge/test_edge_inputs.py, tests/shared/...).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.launcher.mesh import Mesh
from services.shared.errors import DOMAIN, REASONS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("AF_FUZZ_EXAMPLES", "4"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)

SERVICES = [
    "agentforge.training.v1.TrainingService", "agentforge.model.v1.ModelService",
    "agentforge.realtime.v1.RealtimeService", "agentforge.monitoring.v1.MonitoringService",
    "agentforge.forge.v1.ForgeService",
]

#: gRPC codes a client's mistake may get (4xx-class over REST). UNAVAILABLE is not one.
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _import_services() -> descriptor_pool.DescriptorPool:
    import agentforge.forge.v1.forge_service_pb2  # noqa: F401
    import agentforge.model.v1.model_service_pb2  # noqa: F401
    import agentforge.monitoring.v1.monitoring_service_pb2  # noqa: F401
    import agentforge.realtime.v1.realtime_service_pb2  # noqa: F401
    import agentforge.training.v1.training_service_pb2  # noqa: F401

    return descriptor_pool.Default()


POOL = _import_services()
METHODS: list[MethodDescriptor] = [m for s in SERVICES for m in POOL.FindServiceByName(s).methods]


# --- strategies from descriptors ----------------------------------------------------------

ODD_TEXT = ["", " ", "\x00", "é", "😀", "\u202e", "../../etc/passwd",
            "%ff", "+", "a b", "models/m", "models/m/versions/1", "trainingJobs/abc", "phaseRuns/x",
            "phases/cognate", "topics/t", "alertRules/r", "components/training", "latest", "0", "-1",
            "create_time asc", "k=v", "*"]
#: Boundary lengths (64 = many name limits; 30,000 = the issue's huge label key).
LONG_TEXT = st.sampled_from([64, 65, 300, 4097, 30_000]).map(lambda n: "k" * n)
INT_EDGES = [0, 1, -1, 7, 4095, 4096, 4194304, 4194305, 2**31 - 1, -(2**31)]


def _int_strategy(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in INT_EDGES + [low, high] if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


_SCALARS: dict[int, Callable[[FieldDescriptor], st.SearchStrategy[Any]]] = {
    FieldDescriptor.TYPE_STRING: lambda f: st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=24), LONG_TEXT),
    FieldDescriptor.TYPE_BYTES: lambda f: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: lambda f: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: lambda f: st.floats(),
    FieldDescriptor.TYPE_FLOAT: lambda f: st.floats(width=32),
    FieldDescriptor.TYPE_INT32: lambda f: _int_strategy(32, True),
    FieldDescriptor.TYPE_SINT32: lambda f: _int_strategy(32, True),
    FieldDescriptor.TYPE_SFIXED32: lambda f: _int_strategy(32, True),
    FieldDescriptor.TYPE_INT64: lambda f: _int_strategy(64, True),
    FieldDescriptor.TYPE_SINT64: lambda f: _int_strategy(64, True),
    FieldDescriptor.TYPE_SFIXED64: lambda f: _int_strategy(64, True),
    FieldDescriptor.TYPE_UINT32: lambda f: _int_strategy(32, False),
    FieldDescriptor.TYPE_FIXED32: lambda f: _int_strategy(32, False),
    FieldDescriptor.TYPE_UINT64: lambda f: _int_strategy(64, False),
    FieldDescriptor.TYPE_FIXED64: lambda f: _int_strategy(64, False),
    FieldDescriptor.TYPE_ENUM: lambda f: st.one_of(
        st.sampled_from([v.number for v in f.enum_type.values]), st.integers(-3, 200)),
}


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _fields(field.message_type, depth + 1)
    return _SCALARS[field.type](field)


def _fields(desc: Descriptor, depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """A dict field name → value (lists for repeated, dicts for maps) for ``desc``."""
    if depth > 3:
        return st.just({})
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, val = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            optional[field.name] = st.dictionaries(_value(key, depth), _value(val, depth), max_size=3)
        elif field.is_repeated:
            optional[field.name] = st.lists(_value(field, depth), max_size=3)
        else:
            optional[field.name] = _value(field, depth)
    return st.fixed_dictionaries({}, optional=optional)


def _fill(message: Any, values: dict[str, Any]) -> None:
    desc = message.DESCRIPTOR
    for name, value in values.items():
        field = desc.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.message_type is not None:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            for item in value:
                if field.message_type is not None:
                    _fill(target.add(), item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            sub = target
            sub.SetInParent()
            _fill(sub, value)
        else:
            setattr(message, name, value)


def message_strategy(desc: Descriptor) -> st.SearchStrategy[Any]:
    """Messages of type ``desc``: any subset of fields, any values of their types."""
    cls = message_factory.GetMessageClass(desc)

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        _fill(message, values)
        return message

    return _fields(desc, 0).map(build)


def request_bytes(method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Serialized requests, and raw garbage as protobuf."""
    valid = message_strategy(method.input_type).map(lambda m: m.SerializeToString())
    truncated = valid.filter(lambda b: len(b) > 1).map(lambda b: b[: len(b) // 2])
    return st.one_of(valid, valid, truncated, st.binary(max_size=200))


# --- checks -------------------------------------------------------------------------------


def _check_status(status: status_pb2.Status, where: str) -> None:
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"{where}: expected one ErrorInfo in {status}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == DOMAIN and info.reason in REASONS, f"{where}: ErrorInfo not in the catalogue: {info}"


def _check_rpc_error(err: grpc.RpcError, where: str, streaming: bool) -> None:
    code = err.code()  # type: ignore[attr-defined]
    if streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return  # our own short deadline on a stream that follows without end
    assert code in CLIENT_CODES, f"{where}: {code.name} {err.details()!r}"  # type: ignore[attr-defined]
    rich = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")  # type: ignore[attr-defined]
    assert rich is not None, f"{where}: {code.name} without grpc-status-details-bin"
    _check_status(status_pb2.Status.FromString(rich), where)


def _check_rest(resp: httpx.Response, where: str) -> None:
    assert resp.status_code < 500, f"{where}: HTTP {resp.status_code} {resp.text[:300]!r}"
    if resp.status_code < 400:
        return
    assert resp.headers.get("content-type", "").startswith("application/json"), f"{where}: {resp.headers}"
    body = resp.json()
    status = status_pb2.Status()
    json_format.ParseDict(body, status, ignore_unknown_fields=False)
    assert status.code != 0, f"{where}: {body}"
    _check_status(status, where)


# --- gRPC -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_channel(mesh: Mesh) -> grpc.Channel:
    channel = grpc.insecure_channel(f"127.0.0.1:{mesh.edge_port}")
    yield channel  # type: ignore[misc]
    channel.close()


def _cleanup(channel: grpc.Channel, response: bytes, method: MethodDescriptor) -> None:
    """Stop what a fuzzed create started (a training job or a phase run burns CPU)."""
    name = method.output_type.full_name
    if name == "agentforge.training.v1.TrainingJob":
        from agentforge.training.v1 import request_response_pb2 as trr, training_job_pb2

        job = training_job_pb2.TrainingJob.FromString(response)
        with_call = channel.unary_unary("/agentforge.training.v1.TrainingService/CancelTrainingJob",
                                        request_serializer=trr.CancelTrainingJobRequest.SerializeToString,
                                        response_deserializer=lambda b: b)
        try:
            with_call(trr.CancelTrainingJobRequest(name=job.name), timeout=10)
        except grpc.RpcError:
            pass
    elif name == "agentforge.forge.v1.PhaseRun":
        from agentforge.forge.v1 import phase_run_pb2, request_response_pb2 as frr

        run = phase_run_pb2.PhaseRun.FromString(response)
        cancel = channel.unary_unary("/agentforge.forge.v1.ForgeService/CancelPhaseRun",
                                     request_serializer=frr.CancelPhaseRunRequest.SerializeToString,
                                     response_deserializer=lambda b: b)
        try:
            cancel(frr.CancelPhaseRunRequest(name=run.name), timeout=10)
        except grpc.RpcError:
            pass


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name.rpartition(".")[2] + "/" + m.name for m in METHODS])
def test_fuzz_grpc(grpc_channel: grpc.Channel, method: MethodDescriptor) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    streaming_out = method.server_streaming

    @FUZZ
    @given(payload=request_bytes(method))
    def check(payload: bytes) -> None:
        where = f"gRPC {path} {payload[:80]!r}"
        kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if streaming_out else "unary")
        call = getattr(grpc_channel, kind)(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        request: Any = iter([payload]) if method.client_streaming else payload
        try:
            if streaming_out:
                for _ in call(request, timeout=1.5):
                    pass
            else:
                _cleanup(grpc_channel, call(request, timeout=20), method)
        except grpc.RpcError as err:
            _check_rpc_error(err, where, streaming_out)

    check()


# --- REST -------------------------------------------------------------------------------------

ODD_SEGMENTS = ["%ff", "%00", "%2F", "..", ".", "a%20b", "%c3%28", "+", "x" * 300, "%E2%80%AE", "é", "a:b",
                "models", "1", "0", "latest"]


def _bindings(method: MethodDescriptor) -> list[tuple[str, str, str]]:
    """(HTTP method, path template, body) of each google.api.http binding."""
    options = descriptor_pb2.MethodOptions()
    options.ParseFromString(method.GetOptions().SerializeToString())
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    out = []
    for r in [rule, *rule.additional_bindings]:
        verb = r.WhichOneof("pattern")
        if verb and verb != "custom":
            out.append((verb.upper(), getattr(r, verb), r.body))
    return out


ROUTES = [(m, *b) for m in METHODS for b in _bindings(m)]


def _segment() -> st.SearchStrategy[str]:
    plain = st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True)
    encoded = st.text(max_size=12).map(lambda t: urllib.parse.quote(t, safe=""))
    return st.one_of(plain, plain, st.sampled_from(ODD_SEGMENTS), encoded)


def _path(template: str) -> st.SearchStrategy[str]:
    parts = re.split(r"(\{[^}]*\})", template)
    pieces: list[st.SearchStrategy[str]] = []
    for part in parts:
        if not part.startswith("{"):
            pieces.append(st.just(part))
            continue
        pattern = part[1:-1].partition("=")[2] or "*"
        segs = [st.just(p) if p not in ("*", "**") else _segment() for p in pattern.split("/")]
        pieces.append(st.tuples(*segs).map("/".join))
    return st.tuples(*pieces).map("".join)


def _query(method: MethodDescriptor) -> st.SearchStrategy[str]:
    names = [f.json_name for f in method.input_type.fields
             if f.type != FieldDescriptor.TYPE_MESSAGE or f.message_type.full_name.startswith("google.protobuf.")]
    names += ["noSuchParam", "page_size", "$alt", "name"]
    value = st.one_of(st.sampled_from(ODD_TEXT).map(urllib.parse.quote_plus),
                      st.sampled_from(["1", "true", "-5", "1e99", "create_time+asc", "a%3Db+c", "%ff", "%00", "+"]),
                      st.text(max_size=10).map(urllib.parse.quote_plus))
    pair = st.tuples(st.sampled_from(names), value).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(pair, max_size=3).map("&".join)


def _json_body(method: MethodDescriptor, body: str) -> st.SearchStrategy[bytes]:
    if not body:
        return st.just(b"")
    desc = method.input_type if body == "*" else method.input_type.fields_by_name[body].message_type

    def to_json(message: Any) -> bytes:
        try:
            return json.dumps(json_format.MessageToDict(message)).encode()
        except Exception:  # noqa: BLE001 - e.g. a Timestamp out of range has no JSON form
            return b"{}"

    if desc is None:  # a scalar body field
        return st.sampled_from([b'"x"', b"1", b"null"])
    json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                               lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                               max_leaves=8).map(lambda v: json.dumps(v).encode())
    return st.one_of(message_strategy(desc).map(to_json), message_strategy(desc).map(to_json), json_values,
                     st.binary(max_size=100), st.just(b'{"a":1,"a":2}'))


@pytest.fixture(scope="module")
def rest_client(mesh: Mesh) -> httpx.Client:
    with httpx.Client(base_url=mesh.edge_url, timeout=20) as client:
        yield client  # type: ignore[misc]


@pytest.mark.parametrize(("method", "verb", "template", "body"), ROUTES,
                         ids=[f"{v} {t}" for _, v, t, _ in ROUTES])
def test_fuzz_rest(rest_client: httpx.Client, method: MethodDescriptor, verb: str, template: str, body: str) -> None:
    @FUZZ
    @given(path=_path(template), query=_query(method), content=_json_body(method, body))
    def check(path: str, query: str, content: bytes) -> None:
        url = path + ("?" + query if query else "")
        where = f"REST {verb} {url[:200]} {content[:100]!r}"
        headers = {"content-type": "application/json"} if content else {}
        # A watch with nothing to report sends no headers until its first event.
        timeout = 3.0 if method.server_streaming else 20.0
        request = rest_client.build_request(verb, url, content=content or None, headers=headers, timeout=timeout)
        try:
            resp = rest_client.send(request, stream=True)
        except httpx.ReadTimeout:
            if method.server_streaming:
                return
            raise
        try:
            if resp.status_code >= 300 or not method.server_streaming:
                resp.read()
            _check_rest(resp, where)
            if resp.status_code < 300 and not method.server_streaming and resp.content:
                _cleanup_rest(rest_client, method, resp)
        finally:
            resp.close()

    check()


def _cleanup_rest(client: httpx.Client, method: MethodDescriptor, resp: httpx.Response) -> None:
    name = method.output_type.full_name
    if name in ("agentforge.training.v1.TrainingJob", "agentforge.forge.v1.PhaseRun"):
        created = resp.json().get("name", "")
        if created:
            client.post(f"/v1/{created}:cancel", json={})


# --- still alive ------------------------------------------------------------------------------


def test_every_service_is_still_serving_after_the_fuzzing(grpc_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(grpc_channel)
    for service in SERVICES:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_fuzz_covers_every_method_and_route() -> None:
    assert len(METHODS) >= 40 and len(ROUTES) >= len([m for m in METHODS if _bindings(m)]) >= 30
