"""A real model registry (shared gRPC runtime on [::]:0, real Valkey, tmp data dir)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentforge.model.v1 import model_pb2, model_service_pb2_grpc, model_version_pb2
from agentforge.model.v1 import request_response_pb2 as rr
from services.model.config import ModelConfig
from services.model.server import ModelApp, create_server
from services.shared.bus import Backoff, BusConfig, EventBus
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey
from tests.support import error_details, violation_map


@dataclass
class Registry:
    app: ModelApp
    stub: model_service_pb2_grpc.ModelServiceStub
    bus: EventBus
    config: ModelConfig

    @property
    def events_stream(self) -> str:
        return self.config.events_stream

    @property
    def training_stream(self) -> str:
        return self.config.training_stream


def bus_config(url: str) -> BusConfig:
    return BusConfig(url=url, block_ms=100, claim_idle_ms=500, backoff=Backoff(initial_s=0.02, max_s=0.2))


@pytest.fixture
async def registry(tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str) -> AsyncIterator[Registry]:
    config = ModelConfig(
        data_dir=tmp_path / "model", events_stream=stream_prefix + "events.model",
        training_stream=stream_prefix + "events.training", outbox_poll_s=0.2, max_artifact_bytes=64 * 1024 * 1024,
    )
    app = await create_server(config, server_config=ServerConfig(grace_seconds=0.5, metrics_port=-1),
                              bus_config=bus_config(valkey.url))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    bus = EventBus(bus_config(valkey.url))
    try:
        yield Registry(app, model_service_pb2_grpc.ModelServiceStub(channel), bus, config)
    finally:
        await channel.close()
        await bus.aclose()
        await app.close()


def details(exc: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    """The ErrorInfo and the (field, description) violations of a rich error."""
    info, _ = error_details(exc)
    return info or error_details_pb2.ErrorInfo(), list(violation_map(exc).items())


async def make_model(stub: model_service_pb2_grpc.ModelServiceStub, model_id: str, **fields: object) -> model_pb2.Model:
    return await stub.CreateModel(rr.CreateModelRequest(model_id=model_id, model=model_pb2.Model(**fields)))


async def make_version(stub: model_service_pb2_grpc.ModelServiceStub, model_id: str,
                       **fields: object) -> model_version_pb2.ModelVersion:
    return await stub.CreateModelVersion(rr.CreateModelVersionRequest(
        parent=f"models/{model_id}", model_version=model_version_pb2.ModelVersion(**fields)))


def header(name: str, data: bytes, fmt: int = model_version_pb2.ARTIFACT_FORMAT_STATE_DICT,
           sha256: str | None = None) -> rr.UploadModelArtifactRequest:
    return rr.UploadModelArtifactRequest(header=rr.UploadHeader(
        name=name, size_bytes=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest(), format=fmt))


def chunk(offset: int, data: bytes) -> rr.UploadModelArtifactRequest:
    return rr.UploadModelArtifactRequest(chunk=rr.UploadChunk(offset=offset, data=data))


async def upload_all(stub: model_service_pb2_grpc.ModelServiceStub, name: str, data: bytes,
                     size: int = 64 * 1024) -> rr.UploadModelArtifactResponse:
    messages = [header(name, data)] + [chunk(o, data[o:o + size]) for o in range(0, len(data), size)]
    return await stub.UploadModelArtifact(iter(messages))


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # type: ignore[misc]
            await asyncio.sleep(0.05)


__all__ = ["Registry", "chunk", "details", "header", "make_model", "make_version", "status_pb2", "upload_all",
           "wait_until"]
