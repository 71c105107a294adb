"""Undecodable request bytes: INVALID_ARGUMENT for every RPC kind, counted and logged.

Regression tests for issue 8 ("a truncated protobuf message over gRPC", "bad UTF-8 in
a string field"): grpc's own deserializer failure used to give UNKNOWN with a
traceback, before any interceptor ran.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio
import pytest
from agentforge.training.v1 import request_response_pb2 as rr
from google.protobuf import wrappers_pb2
from grpc_status import rpc_status

from .conftest import EchoServer
from .echo_service import method
from tests.support import error_details

S = wrappers_pb2.StringValue
#: A StringValue whose string holds the byte 0xFF: not UTF-8.
BAD_UTF8 = S(value="abc").SerializeToString().replace(b"abc", b"a\xffc")
#: A GetTrainingJobRequest cut off inside its name.
TRUNCATED = rr.GetTrainingJobRequest(name="trainingJobs/abc").SerializeToString()[:-3]


def _raw(channel: grpc.aio.Channel, kind: str, name: str, resp: type) -> object:
    factory = {"uu": channel.unary_unary, "us": channel.unary_stream,
               "su": channel.stream_unary, "ss": channel.stream_stream}[kind]
    return factory(method(name), request_serializer=lambda b: b, response_deserializer=resp.FromString)


async def _expect_invalid(call: object) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]
    err = exc_info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "could not be decoded" in (err.details() or "")
    assert "Error" not in (err.details() or "").split(":")[0]  # no Python exception name
    info, bad = error_details(await rpc_status.aio.from_call(call))  # type: ignore[arg-type]
    assert info is not None and (info.reason, info.domain) == ("MALFORMED_REQUEST", "agentforge.dev")
    assert bad is not None and len(bad.field_violations) == 1


@pytest.mark.parametrize(
    ("kind", "name", "resp", "payload"),
    [
        ("uu", "Unary", S, BAD_UTF8),
        ("uu", "Validated", S, TRUNCATED),
        ("us", "ServerStream", wrappers_pb2.Int64Value, b"\x08"),  # varint cut off
    ],
)
async def test_undecodable_request_is_invalid_argument(
    echo_server: EchoServer, channel: grpc.aio.Channel, kind: str, name: str, resp: type, payload: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await _expect_invalid(_raw(channel, kind, name, resp)(payload))
    # One ordinary "rpc finished" line, no traceback from grpc's deserializer.
    finished = [r for r in caplog.records if r.name == "services.shared.rpc"]
    assert [r.grpc_code for r in finished] == ["INVALID_ARGUMENT"]  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(("kind", "name"), [("su", "ClientStream"), ("ss", "Bidi"), ("ss", "BidiReadWrite")])
async def test_undecodable_message_in_a_client_stream_is_invalid_argument(
    channel: grpc.aio.Channel, kind: str, name: str,
) -> None:
    good = S(value="ok").SerializeToString()
    resp = wrappers_pb2.Int64Value if kind == "su" else S
    await _expect_invalid(_raw(channel, kind, name, resp)(iter([good, BAD_UTF8, good])))


async def test_undecodable_request_is_counted_in_per_method_metrics(
    echo_server: EchoServer, channel: grpc.aio.Channel,
) -> None:
    await _expect_invalid(_raw(channel, "uu", "Unary", S)(BAD_UTF8))
    families = {m.name: m for m in echo_server.service.registry.collect()}
    handled = [s for s in families["grpc_server_handled"].samples
               if s.name.endswith("_total") and s.labels.get("grpc_method") == "Unary"]
    assert [(s.labels["grpc_code"], s.value) for s in handled] == [("INVALID_ARGUMENT", 1.0)]
    started = [s for s in families["grpc_server_started"].samples
               if s.name.endswith("_total") and s.labels.get("grpc_method") == "Unary"]
    assert [s.value for s in started] == [1.0]


async def test_a_decodable_request_still_reaches_the_handler(channel: grpc.aio.Channel) -> None:
    reply = await _raw(channel, "uu", "Unary", S)(S(value="hi").SerializeToString())  # type: ignore[misc]
    assert reply.value == "hi"


async def test_a_string_that_is_not_utf8_is_named_in_the_violation(channel: grpc.aio.Channel) -> None:
    call = _raw(channel, "uu", "Unary", S)(BAD_UTF8)
    with pytest.raises(grpc.aio.AioRpcError):
        await call  # type: ignore[misc]
    _, bad = error_details(await rpc_status.aio.from_call(call))  # type: ignore[arg-type]
    assert bad is not None and [v.field for v in bad.field_violations] == ["value"]
