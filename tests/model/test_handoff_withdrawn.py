"""Issue 11's cancel race: a Cognate job that had already SUCCEEDED was registered by the
bus hand-off AFTER its phase run's compensation ran, leaving a half-registered version.

The hand-off asks the forge (a real gRPC server with the ForgeService contract and the
shared runtime, answering scripted run states) before registering and again after;
a run being undone gets nothing registered, and a version registered just before the
run started undoing is removed — whichever way the race falls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from agentforge.forge.v1 import forge_service_pb2_grpc, phase_run_pb2
from agentforge.forge.v1 import request_response_pb2 as forge_rr
from agentforge.model.v1 import model_service_pb2_grpc
from agentforge.model.v1 import request_response_pb2 as rr
from services.model.config import ModelConfig
from services.model.server import create_server
from services.shared.config import ServerConfig
from services.shared.errors import NotFound
from services.shared.server import build_server
from services.shared.valkey import EmbeddedValkey

from .conftest import Registry, bus_config
from .test_exports_and_handoff import completed_event, write_checkpoint

R = phase_run_pb2.PhaseRunState


@dataclass
class ScriptedForge(forge_service_pb2_grpc.ForgeServiceServicer):
    """GetPhaseRun answers the next scripted state (the last one repeats); counts calls."""

    states: list[int] = field(default_factory=list)
    calls: int = 0

    async def GetPhaseRun(self, request: forge_rr.GetPhaseRunRequest, context: Any) -> phase_run_pb2.PhaseRun:
        state = self.states[min(self.calls, len(self.states) - 1)]
        self.calls += 1
        if state == -1:
            raise NotFound(f"{request.name} does not exist", reason="PHASE_RUN_NOT_FOUND")
        return phase_run_pb2.PhaseRun(name=request.name, state=state)


@pytest.fixture
async def forge() -> AsyncIterator[tuple[ScriptedForge, int]]:
    fake = ScriptedForge()

    def register(server: grpc.aio.Server) -> list[str]:
        forge_service_pb2_grpc.add_ForgeServiceServicer_to_server(fake, server)
        return ["agentforge.forge.v1.ForgeService"]

    service = await build_server(ServerConfig(host="127.0.0.1", grace_seconds=0.2, metrics_port=-1), "forge",
                                 register)
    try:
        yield fake, service.port
    finally:
        await service.shutdown(0.2)


@pytest.fixture
async def registry(tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str,
                   forge: tuple[ScriptedForge, int]) -> AsyncIterator[Registry]:
    config = ModelConfig(
        data_dir=tmp_path / "model", events_stream=stream_prefix + "events.model",
        training_stream=stream_prefix + "events.training", outbox_poll_s=0.2,
        forge_addr=f"127.0.0.1:{forge[1]}",
    )
    app = await create_server(config, server_config=ServerConfig(grace_seconds=0.5, metrics_port=-1),
                              bus_config=bus_config(valkey.url))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield Registry(app, model_service_pb2_grpc.ModelServiceStub(channel), app.bus, config)
    finally:
        await channel.close()
        await app.close()


async def _handled(registry: Registry, entries: int = 1) -> None:
    """Wait until the hand-off group has read and acknowledged ``entries`` entries."""
    client = registry.bus.client
    async with asyncio.timeout(30):
        while True:
            groups = await client.xinfo_groups(registry.training_stream)
            if groups and groups[0]["entries-read"] and groups[0]["entries-read"] >= entries \
                    and (await client.xpending(registry.training_stream, "model-registry"))["pending"] == 0:
                return
            await asyncio.sleep(0.05)


async def _versions(registry: Registry) -> list[str]:
    try:
        listed = await registry.stub.ListModelVersions(rr.ListModelVersionsRequest(parent="models/grok"))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return []
    return [v.name for v in listed.model_versions]


async def _publish(registry: Registry, tmp_path: Path) -> None:
    _, sha = write_checkpoint(tmp_path / "ckpt.pt")
    await registry.bus.publish(registry.training_stream, completed_event(tmp_path / "ckpt.pt", sha),
                               subject="trainingJobs/job-1")


@pytest.mark.parametrize("state", [R.PHASE_RUN_STATE_CANCELLED, R.PHASE_RUN_STATE_COMPENSATING,
                                   R.PHASE_RUN_STATE_FAILED])
async def test_a_hand_off_of_a_run_being_undone_registers_nothing(
        registry: Registry, forge: tuple[ScriptedForge, int], tmp_path: Path, state: int) -> None:
    forge[0].states = [state]
    await _publish(registry, tmp_path)
    await _handled(registry)
    assert await _versions(registry) == []
    assert forge[0].calls >= 1


async def test_a_run_that_starts_undoing_while_the_hand_off_registers_leaves_no_version(
        registry: Registry, forge: tuple[ScriptedForge, int], tmp_path: Path) -> None:
    """The race itself: RUNNING when the hand-off starts, CANCELLED (compensation ran,
    found nothing yet) by the time it has registered."""
    forge[0].states = [R.PHASE_RUN_STATE_RUNNING, R.PHASE_RUN_STATE_CANCELLED]
    await _publish(registry, tmp_path)
    await _handled(registry)
    assert forge[0].calls == 2
    assert await _versions(registry) == []
    artifacts = registry.config.artifacts_dir
    assert not any(p.is_file() for p in artifacts.rglob("*")) if artifacts.exists() else True


@pytest.mark.parametrize("states", [[R.PHASE_RUN_STATE_RUNNING], [R.PHASE_RUN_STATE_SUCCEEDED], [-1]])
async def test_a_hand_off_of_a_live_finished_or_unknown_run_registers(
        registry: Registry, forge: tuple[ScriptedForge, int], tmp_path: Path, states: list[int]) -> None:
    forge[0].states = states
    await _publish(registry, tmp_path)
    await _handled(registry)
    assert await _versions(registry) == ["models/grok/versions/1"]
