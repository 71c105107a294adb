"""The model registry's domain metrics on its real /metrics endpoint (docs/metrics.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest
from agentforge.model.v1 import model_service_pb2_grpc
from agentforge.model.v1 import request_response_pb2 as rr

from services.model.config import ModelConfig
from services.model.server import ModelApp, create_server
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey
from tests.model.conftest import bus_config, make_model, make_version, upload_all
from tests.support import scrape

DATA = bytes(range(256)) * 700  # 179,200 bytes


@pytest.fixture
async def app(tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str) -> AsyncIterator[ModelApp]:
    config = ModelConfig(data_dir=tmp_path / "model", events_stream=stream_prefix + "events.model",
                         training_stream=stream_prefix + "events.training", outbox_poll_s=0.2)
    app = await create_server(config, server_config=ServerConfig(grace_seconds=0.5, metrics_port=0),
                              bus_config=bus_config(valkey.url))
    try:
        yield app
    finally:
        await app.close()


async def test_artifact_bytes_in_and_out_and_the_registry_streams(app: ModelApp, stream_prefix: str) -> None:
    port = app.service.metrics_port
    assert port
    before = await asyncio.to_thread(scrape, port)
    assert before[("agentforge_model_artifact_received_bytes_total", (("source", "upload"),))] == 0
    assert before[("agentforge_model_artifact_sent_bytes_total", ())] == 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        await make_model(stub, "m")
        v = await make_version(stub, "m")
        await upload_all(stub, v.name, DATA)
        got = 0
        async for part in stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(name=v.name, read_limit=1000)):
            got += len(part.data)
        assert got == 1000
    async with asyncio.timeout(10):  # the outbox relay publishes ModelVersionCreated
        while True:
            after = await asyncio.to_thread(scrape, port)
            added = after.get(("agentforge_bus_entries_added_total", (("stream", stream_prefix + "events.model"),)))
            if added:
                break
            await asyncio.sleep(0.1)
    assert after[("agentforge_model_artifact_received_bytes_total", (("source", "upload"),))] == len(DATA)
    assert after[("agentforge_model_artifact_received_bytes_total", (("source", "handoff"),))] == 0
    assert after[("agentforge_model_artifact_sent_bytes_total", ())] == 1000
    group = (("group", "model-registry"), ("stream", stream_prefix + "events.training"))
    assert after[("agentforge_bus_group_lag", group)] == 0
    assert after[("agentforge_bus_group_pending", group)] == 0
    assert after[("agentforge_bus_dead_letter_entries", (("stream", stream_prefix + "events.training"),))] == 0
