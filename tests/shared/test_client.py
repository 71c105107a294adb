"""Client factory: retry policy for idempotent methods only, deadline propagation."""

from __future__ import annotations

import json
import time

import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2, wrappers_pb2

from services.shared.client import RetryPolicy, effective_timeout, make_channel, service_config
from services.shared.context import deadline_var, request_id_var

from .conftest import EchoServer, rpc

# grpc-timeout is encoded with a few significant digits, rounded up: allow that slack.
SLACK = 0.05

S, I, D = wrappers_pb2.StringValue, wrappers_pb2.Int64Value, wrappers_pb2.DoubleValue
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_service_config_lists_only_idempotent_methods() -> None:
    config = service_config(["/a.v1.S/Get", "b.v1.T"], FAST)
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [{"service": "a.v1.S", "method": "Get"}, {"service": "b.v1.T"}]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method_config["retryPolicy"]["maxAttempts"] == 4
    assert service_config([], FAST) == {"methodConfig": []}
    json.dumps(config)  # must be valid JSON for grpc.service_config


async def test_idempotent_method_is_retried_on_unavailable(echo_server: EchoServer) -> None:
    async with make_channel(echo_server.target, idempotent_methods=["/test.v1.Echo/Flaky"], retry=FAST) as ch:
        reply = await rpc(ch, "uu", "Flaky", S, I)(S(value="k1"))
    assert reply.value == 3  # two UNAVAILABLE attempts, then success
    assert echo_server.servicer.attempts["k1"] == 3


async def test_non_idempotent_method_is_not_retried(echo_server: EchoServer) -> None:
    async with make_channel(echo_server.target, idempotent_methods=["/test.v1.Echo/Flaky"], retry=FAST) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc_info:
            await rpc(ch, "uu", "FlakyNotIdempotent", S, I)(S(value="k2"))
    assert exc_info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert echo_server.servicer.attempts["k2"] == 1


async def test_other_codes_are_not_retried_even_when_idempotent(echo_server: EchoServer) -> None:
    async with make_channel(echo_server.target, idempotent_methods=["test.v1.Echo"], retry=FAST) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc_info:
            await rpc(ch, "uu", "Unary", S, S)(S(value="not_found"))
    assert exc_info.value.code() == grpc.StatusCode.NOT_FOUND
    started = [s for m in echo_server.service.registry.collect() if m.name == "grpc_server_started"
               for s in m.samples if s.name.endswith("_total") and s.labels["grpc_method"] == "Unary"]
    assert sum(s.value for s in started) == 1


async def test_downstream_call_is_bounded_by_incoming_deadline(channel: grpc.aio.Channel) -> None:
    downstream = rpc(channel, "uu", "CallDownstream", D, D)
    # No own timeout: the downstream call inherits what is left of the 2 s.
    seen = (await downstream(D(value=0), timeout=2.0)).value
    assert 0 < seen <= 2.0 + SLACK
    # Own timeout shorter than what is left wins.
    seen = (await downstream(D(value=0.5), timeout=5.0)).value
    assert 0 < seen <= 0.5 + SLACK
    # Own timeout longer than what is left is cut to the remainder.
    seen = (await downstream(D(value=30.0), timeout=1.0)).value
    assert 0 < seen <= 1.0 + SLACK
    # Nothing upstream, nothing own: no deadline at all.
    assert (await downstream(D(value=0))).value == -1.0


async def test_default_timeout_applies_to_unary_calls(echo_server: EchoServer) -> None:
    async with make_channel(echo_server.target, default_timeout=3.0) as ch:
        seen = (await rpc(ch, "uu", "Remaining", empty_pb2.Empty, D)(empty_pb2.Empty())).value
        assert 0 < seen <= 3.0 + SLACK
        seen = (await rpc(ch, "uu", "Remaining", empty_pb2.Empty, D)(empty_pb2.Empty(), timeout=1.0)).value
        assert 0 < seen <= 1.0 + SLACK


async def test_request_id_is_forwarded_downstream(echo_server: EchoServer) -> None:
    token = request_id_var.set("fwd-1")
    try:
        async with make_channel(echo_server.target) as ch:
            reply = await rpc(ch, "uu", "RequestId", empty_pb2.Empty, S)(empty_pb2.Empty())
    finally:
        request_id_var.reset(token)
    assert reply.value == "fwd-1"


def test_effective_timeout_is_min_of_own_and_remaining() -> None:
    assert effective_timeout(None) is None and effective_timeout(3.0) == 3.0
    token = deadline_var.set(time.monotonic() + 2.0)
    try:
        assert 1.5 < effective_timeout(None) <= 2.0  # type: ignore[operator]
        assert effective_timeout(0.5) == 0.5
        assert 1.5 < effective_timeout(10.0) <= 2.0  # type: ignore[operator]
    finally:
        deadline_var.reset(token)
