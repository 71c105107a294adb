"""request_id reused with a different request → INVALID_ARGUMENT REQUEST_ID_REUSED (issue 8)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool

from agentforge.model.v1 import model_pb2
from agentforge.model.v1 import request_response_pb2 as rr
from services.shared.config import ServerConfig
from services.shared.idempotency import REQUEST_ID_FIELD, IdempotencyKeys, fingerprint
from services.shared.server import Service, build_server
from tests.support import error_details, field_violations

SERVICE = "test.v1.Creator"
METHOD = f"/{SERVICE}/CreateModel"


class Creator:
    def __init__(self) -> None:
        self.created: dict[str, model_pb2.Model] = {}
        self.calls = 0

    async def create(self, request: rr.CreateModelRequest, context: object) -> model_pb2.Model:
        self.calls += 1
        if request.request_id in self.created:  # the store's own dedupe: first object wins
            return self.created[request.request_id]
        model = model_pb2.Model(name=f"models/{request.model_id}", display_name=request.model.display_name)
        if request.request_id:
            self.created[request.request_id] = model
        return model

    def register(self, server: grpc.aio.Server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(
            self.create, request_deserializer=rr.CreateModelRequest.FromString,
            response_serializer=model_pb2.Model.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"CreateModel": handler}),))
        return [SERVICE]


async def _start(creator: Creator, data_dir: Path | None) -> Service:
    config = ServerConfig(grace_seconds=0.2, metrics_port=-1, data_dir=str(data_dir) if data_dir else "")
    return await build_server(config, "creator", creator.register)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[Service, Creator]]:
    creator = Creator()
    service = await _start(creator, tmp_path)
    try:
        yield service, creator
    finally:
        await service.shutdown(0)


def _create(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(METHOD, request_serializer=rr.CreateModelRequest.SerializeToString,
                               response_deserializer=model_pb2.Model.FromString)


def _request(display: str, request_id: str = "req-1") -> rr.CreateModelRequest:
    return rr.CreateModelRequest(model_id="m1", model=model_pb2.Model(display_name=display), request_id=request_id)


async def test_same_request_id_same_body_returns_the_first_object(server: tuple[Service, Creator]) -> None:
    service, _ = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        first = await _create(channel)(_request("one"))
        again = await _create(channel)(_request("one"))
    assert first == again


async def test_same_request_id_different_body_is_an_error(server: tuple[Service, Creator]) -> None:
    service, creator = server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        await _create(channel)(_request("one"))
        call = _create(channel)(_request("two"))
        with pytest.raises(grpc.aio.AioRpcError) as exc_info:
            await call
        err = exc_info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "different request" in (err.details() or "")
        info, _ = error_details(err)
        assert info is not None and info.reason == "REQUEST_ID_REUSED"
        assert field_violations(err) == [REQUEST_ID_FIELD]
        assert creator.calls == 1  # rejected before the handler
        # Another request_id is a new request; no request_id is never deduplicated.
        assert (await _create(channel)(_request("two", "req-2"))).display_name == "two"
        assert (await _create(channel)(_request("three", ""))).display_name == "three"


async def test_keys_survive_a_restart(tmp_path: Path) -> None:
    service = await _start(Creator(), tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            await _create(channel)(_request("one"))
    finally:
        await service.shutdown(0)
    assert (tmp_path / "idempotency" / "creator.db").exists()
    service = await _start(Creator(), tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as exc_info:
                await _create(channel)(_request("two"))
        assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await service.shutdown(0)


def test_first_record_wins_and_fingerprint_ignores_the_request_id(tmp_path: Path) -> None:
    keys = IdempotencyKeys(tmp_path / "k.db")
    a, b = fingerprint(_request("one", "x")), fingerprint(_request("two", "x"))
    assert a == fingerprint(_request("one", "y")) and a != b
    assert keys.record("/m", "x", a) == a
    assert keys.record("/m", "x", b) == a  # a concurrent loser sees the winner's
    assert keys.get("/m", "x") == a and keys.get("/other", "x") is None


def test_every_method_with_a_request_id_is_unary() -> None:
    """The interceptor covers unary methods: every create-like RPC must be one."""
    import agentforge.forge.v1.forge_service_pb2  # noqa: F401 - load every service into the pool
    import agentforge.model.v1.model_service_pb2  # noqa: F401
    import agentforge.monitoring.v1.monitoring_service_pb2  # noqa: F401
    import agentforge.realtime.v1.realtime_service_pb2  # noqa: F401
    import agentforge.training.v1.training_service_pb2  # noqa: F401

    pool = descriptor_pool.Default()
    found = []
    for package, service in [("forge", "ForgeService"), ("model", "ModelService"),
                             ("monitoring", "MonitoringService"), ("realtime", "RealtimeService"),
                             ("training", "TrainingService")]:
        desc = pool.FindServiceByName(f"agentforge.{package}.v1.{service}")
        for method in desc.methods:
            if REQUEST_ID_FIELD in method.input_type.fields_by_name:
                found.append(method.full_name)
                assert not method.client_streaming and not method.server_streaming, method.full_name
    assert len(found) >= 6, found


async def test_the_keys_are_read_and_written_on_the_store_thread_not_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    for name in ("get", "record"):
        original = getattr(IdempotencyKeys, name)

        def traced(self: IdempotencyKeys, *args: object, _original: object = original) -> object:
            threads.append(threading.current_thread().name)
            return _original(self, *args)  # type: ignore[operator]
        monkeypatch.setattr(IdempotencyKeys, name, traced)
    service = await _start(Creator(), tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            await _create(channel)(_request("one", "key-1"))
    finally:
        await service.shutdown(0)
    assert len(threads) == 2  # one get, one record
    assert all(t.startswith("idempotency-db") for t in threads), threads
