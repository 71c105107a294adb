"""Interceptors: request id, logging, validation, and the four RPC kinds."""

from __future__ import annotations

import json
import logging

import grpc
import grpc.aio
import protovalidate
import pytest
from agentforge.training.v1 import request_response_pb2 as rr
from google.protobuf import empty_pb2, wrappers_pb2
from grpc_status import rpc_status

from services.shared.interceptors import CallInfo, CallInterceptor, ChainInterceptor, field_path
from services.shared.logging import JsonFormatter

from .conftest import EchoServer, rpc
from tests.support import error_details, violation_map

S = wrappers_pb2.StringValue


async def test_request_id_is_adopted_and_echoed(channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "uu", "RequestId", empty_pb2.Empty, S)(
        empty_pb2.Empty(), metadata=(("x-request-id", "req-123"),)
    )
    assert (await call).value == "req-123"  # visible to the handler via the contextvar
    assert ("x-request-id", "req-123") in tuple(await call.initial_metadata())
    assert ("x-request-id", "req-123") in tuple(await call.trailing_metadata())


async def test_request_id_is_minted_when_missing_and_returned_on_errors(channel: grpc.aio.Channel) -> None:
    ok = rpc(channel, "uu", "RequestId", empty_pb2.Empty, S)(empty_pb2.Empty())
    minted = (await ok).value
    assert len(minted) == 32 and dict(await ok.initial_metadata())["x-request-id"] == minted

    failing = rpc(channel, "uu", "Unary", S, S)(S(value="not_found"), metadata=(("x-request-id", "r-err"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await failing
    assert dict(await failing.trailing_metadata())["x-request-id"] == "r-err"


async def test_one_json_log_line_per_finished_rpc(channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.shared.rpc")
    await rpc(channel, "uu", "Unary", S, S)(S(value="hi"), metadata=(("x-request-id", "log-1"),))
    records = [r for r in caplog.records if r.name == "services.shared.rpc"]
    assert len(records) == 1
    doc = json.loads(JsonFormatter("echo").format(records[0]))
    assert doc["msg"] == "rpc finished" and doc["service"] == "echo"
    assert doc["grpc_code"] == "OK" and doc["grpc_type"] == "unary"
    assert doc["duration_ms"] >= 0 and doc["peer"]
    assert doc["request_id"] == "log-1" and doc["method"] == "/test.v1.Echo/Unary"


async def test_read_write_style_bidi_handler_is_observed(echo_server: EchoServer, channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "ss", "BidiReadWrite", S, S)(iter([S(value="a"), S(value="b")]))
    assert [m.value async for m in call] == ["a", "b"]
    families = {m.name: m for m in echo_server.service.registry.collect()}
    sent = families["grpc_server_msg_sent"].samples
    assert sum(s.value for s in sent if s.labels.get("grpc_method") == "BidiReadWrite"
               and s.name.endswith("_total")) == 2


def _bad_request(status) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    info, _ = error_details(status)
    assert info is not None and info.reason == "INVALID_ARGUMENT"
    return list(violation_map(status).items())


async def test_invalid_unary_request_never_reaches_handler(echo_server: EchoServer, channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "uu", "Validated", rr.GetTrainingJobRequest, empty_pb2.Empty)(
        rr.GetTrainingJobRequest(name="not-a-resource-name")
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await call
    assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _bad_request(await rpc_status.aio.from_call(call))
    assert [field for field, _ in violations] == ["name"]
    assert "pattern" in violations[0][1]
    assert echo_server.servicer.validated_calls == 0

    ok = rpc(channel, "uu", "Validated", rr.GetTrainingJobRequest, empty_pb2.Empty)
    await ok(rr.GetTrainingJobRequest(name="trainingJobs/job-1"))
    assert echo_server.servicer.validated_calls == 1


async def test_each_client_stream_message_is_validated(echo_server: EchoServer, channel: grpc.aio.Channel) -> None:
    L = rr.ListTrainingJobsRequest
    messages = [L(page_size=10), L(page_size=5000, page_token="x"), L(page_size=1)]
    call = rpc(channel, "su", "ValidatedStream", L, wrappers_pb2.Int64Value)(iter(messages))
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await call
    assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in _bad_request(await rpc_status.aio.from_call(call))] == ["page_size"]
    assert echo_server.servicer.validated_messages == 1  # the invalid one was never handed over


def test_field_path_renders_nested_indexes_and_keys() -> None:
    E = protovalidate.FieldPathElementPb
    violation = protovalidate.Violation(
        field=protovalidate.FieldPathPb(elements=[
            E(field_name="jobs", subscript=_oneof("index", 2)),
            E(field_name="labels", subscript=_oneof("string_key", "team")),
            E(field_name="value"),
        ]),
        message="bad",
    )
    assert field_path(violation) == 'jobs[2].labels["team"].value'


def _oneof(field: str, value: object):  # type: ignore[no-untyped-def]
    from protobuf import Oneof

    return Oneof(field, value)


class _CountingWraps(CallInterceptor):
    """Counts how often it wraps a handler, and the calls it sees."""

    def __init__(self) -> None:
        self.wraps = 0
        self.calls = 0

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.wraps += 1
        return await super().intercept_service(continuation, handler_call_details)

    async def on_request(self, call: CallInfo, message: object) -> None:
        self.calls += 1


async def test_a_chain_is_composed_once_per_method_and_still_runs_on_every_call() -> None:
    counting = _CountingWraps()
    server = grpc.aio.server(interceptors=[ChainInterceptor([counting])])
    handler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: _echo(request), request_deserializer=S.FromString,
        response_serializer=S.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Once", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/test.v1.Once/Echo", request_serializer=S.SerializeToString,
                                       response_deserializer=S.FromString)
            assert [(await echo(S(value=str(i)), timeout=5)).value for i in range(3)] == ["0", "1", "2"]
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await channel.unary_unary("/test.v1.Once/Nope")(b"", timeout=5)
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)
    assert (counting.wraps, counting.calls) == (1, 3)


async def _echo(request: S) -> S:
    return request
