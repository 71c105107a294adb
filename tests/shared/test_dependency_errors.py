"""Redis being away is UNAVAILABLE (retryable) on every RPC kind, never INTERNAL.

Regression for issue 7: a job watcher got INTERNAL when Valkey was killed, and every
reconnect during the outage got INTERNAL too. The handlers below make real Redis calls
against a real Valkey that the test stops, so the exceptions are the ones redis-py
really raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from google.protobuf import empty_pb2, wrappers_pb2
from google.rpc import code_pb2
from grpc_status import rpc_status
from redis.asyncio import Redis

from services.shared import errors
from services.shared.bus import BusConfig, EventBus
from services.shared.config import ServerConfig
from services.shared.server import build_server
from services.shared.valkey import EmbeddedValkey
from tests.support import error_details

SERVICE = "test.v1.Deps"


class DepsServicer:
    def __init__(self, url: str) -> None:
        self.url = url

    async def ping(self, request: empty_pb2.Empty, context: Any) -> wrappers_pb2.StringValue:
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return wrappers_pb2.StringValue(value=str(await client.ping()))
        finally:
            await client.aclose()

    async def publish(self, request: empty_pb2.Empty, context: Any) -> wrappers_pb2.StringValue:
        bus = EventBus(BusConfig(url=self.url, publish_timeout_s=0.3))
        try:
            cursor = await bus.publish("deps.test", wrappers_pb2.StringValue(value="x"))
            return wrappers_pb2.StringValue(value=str(cursor))
        finally:
            await bus.aclose()

    async def nogroup(self, request: empty_pb2.Empty, context: Any) -> wrappers_pb2.StringValue:
        client = Redis.from_url(self.url)
        try:
            await client.xreadgroup("no-such-group", "c", {"deps.nogroup": ">"}, count=1)
            return wrappers_pb2.StringValue(value="read")
        finally:
            await client.aclose()

    async def watch(self, request: empty_pb2.Empty, context: Any) -> AsyncIterator[ev_pb.TrainingJobEvent]:
        """One event, then a Redis call (the test has stopped Redis by then)."""
        yield ev_pb.TrainingJobEvent(sequence=1)
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                await client.xread({"deps.watch": "$"}, block=100)
        finally:
            await client.aclose()

    def register(self, server: grpc.aio.Server) -> list[str]:
        E, S = empty_pb2.Empty, wrappers_pb2.StringValue

        def uu(fn: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=E.FromString,
                                                       response_serializer=S.SerializeToString)

        handlers = {
            "Ping": uu(self.ping),
            "Publish": uu(self.publish),
            "NoGroup": uu(self.nogroup),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.watch, request_deserializer=E.FromString,
                response_serializer=ev_pb.TrainingJobEvent.SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        return [SERVICE]


@pytest.fixture
async def deps(valkey_factory: Callable[[], EmbeddedValkey]) -> AsyncIterator[tuple[EmbeddedValkey, grpc.aio.Channel]]:
    server = valkey_factory()
    service = await build_server(ServerConfig(grace_seconds=0.2, metrics_port=-1), "deps",
                                 DepsServicer(server.url).register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield server, channel
    finally:
        await channel.close()
        await service.shutdown(0)


def _unary(channel: grpc.aio.Channel, name: str) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=empty_pb2.Empty.SerializeToString,
                               response_deserializer=wrappers_pb2.StringValue.FromString)


async def _assert_dependency_unavailable(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await call
    assert exc_info.value.code() == grpc.StatusCode.UNAVAILABLE, exc_info.value
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    info, _ = error_details(status)
    assert info is not None and info.reason == "DEPENDENCY_UNAVAILABLE"
    assert dict(info.metadata) == {"dependency": "redis"}


@pytest.mark.parametrize("method", ["Ping", "Publish"])
async def test_unary_call_while_redis_is_down_is_unavailable(deps: tuple[EmbeddedValkey, grpc.aio.Channel],
                                                             method: str) -> None:
    server, channel = deps
    assert (await _unary(channel, "Ping")(empty_pb2.Empty())).value == "True"
    server.kill()
    await _assert_dependency_unavailable(_unary(channel, method)(empty_pb2.Empty()))


async def test_nogroup_reply_of_a_restarted_redis_is_unavailable(
        deps: tuple[EmbeddedValkey, grpc.aio.Channel]) -> None:
    _server, channel = deps
    await _assert_dependency_unavailable(_unary(channel, "NoGroup")(empty_pb2.Empty()))


async def test_stream_that_loses_redis_mid_stream_ends_unavailable(
        deps: tuple[EmbeddedValkey, grpc.aio.Channel]) -> None:
    server, channel = deps
    call = channel.unary_stream(f"/{SERVICE}/Watch", request_serializer=empty_pb2.Empty.SerializeToString,
                                response_deserializer=ev_pb.TrainingJobEvent.FromString)(empty_pb2.Empty())
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        async for event in call:
            got.append(event)
            if len(got) == 1:
                server.kill()
    assert exc_info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [e.sequence for e in got] == [1]


async def test_reconnect_during_the_outage_is_unavailable(deps: tuple[EmbeddedValkey, grpc.aio.Channel]) -> None:
    server, channel = deps
    server.kill()
    for _ in range(3):
        call = channel.unary_stream(f"/{SERVICE}/Watch", request_serializer=empty_pb2.Empty.SerializeToString,
                                    response_deserializer=ev_pb.TrainingJobEvent.FromString)(empty_pb2.Empty())
        with pytest.raises(grpc.aio.AioRpcError) as exc_info:
            async for _event in call:
                pass
        assert exc_info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_other_errors_keep_their_mapping() -> None:
    boom = RuntimeError("x")
    assert errors.as_domain_error(boom) is boom
    assert errors.status_for_exception(boom, "d").code == code_pb2.INTERNAL
    from redis import exceptions as redis_errors
    wrongtype = redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    assert errors.status_for_exception(wrongtype, "d").code == code_pb2.INTERNAL
    assert errors.status_for_exception(redis_errors.BusyLoadingError("loading"), "d").code == code_pb2.UNAVAILABLE
