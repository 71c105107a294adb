"""Wiring of the forge service: store, peers, bus, run manager, servicer."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from agentforge.forge.v1 import forge_service_pb2, forge_service_pb2_grpc
from agentforge.model.v1 import model_service_pb2_grpc
from agentforge.training.v1 import training_service_pb2_grpc
from services.forge.config import ForgeConfig
from services.forge.metrics import PhaseRunsCollector
from services.forge.saga import BUS_STREAM, RunManager
from services.forge.servicer import ForgeServicer
from services.forge.store import RunStore
from services.shared.bus import BusConfig, EventBus
from services.shared.readiness import redis_ping
from services.shared.client import make_channel
from services.shared.metrics import BusStreamCollector
from services.shared.server import run_service

__all__ = ["Forge", "main"]

SERVICE = forge_service_pb2.DESCRIPTOR.services_by_name["ForgeService"].full_name
# Reads and creates with a request id are safe to resend on UNAVAILABLE.
TRAINING_IDEMPOTENT = [f"/agentforge.training.v1.TrainingService/{m}" for m in
                       ("GetTrainingJob", "ListTrainingJobs", "CreateTrainingJob", "CancelTrainingJob")]
MODEL_IDEMPOTENT = [f"/agentforge.model.v1.ModelService/{m}" for m in
                    ("GetModel", "ListModelVersions", "GetModelVersion", "SetModelAlias")]


class Forge:
    """The forge service's parts, built from config; `register` and `close` for the runtime."""

    def __init__(self, config: ForgeConfig) -> None:
        self.config = config
        self.store: RunStore | None = None
        self.runs: RunManager | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._bus: EventBus | None = None
        self._collectors: list[PhaseRunsCollector | BusStreamCollector] = []

    async def register(self, server: grpc.aio.Server) -> list[str]:
        self.store = RunStore(self.config.db_path)
        training_ch = make_channel(self.config.training_addr, idempotent_methods=TRAINING_IDEMPOTENT)
        model_ch = make_channel(self.config.model_addr, idempotent_methods=MODEL_IDEMPOTENT)
        self._channels = [training_ch, model_ch]
        self._bus = EventBus(BusConfig.from_env())
        self.runs = RunManager(
            self.store,
            training_service_pb2_grpc.TrainingServiceStub(training_ch),
            model_service_pb2_grpc.ModelServiceStub(model_ch),
            self._bus,
            self.config,
        )
        forge_service_pb2_grpc.add_ForgeServiceServicer_to_server(ForgeServicer(self.runs, self.store), server)
        await self.runs.recover()
        return [SERVICE]

    def bind_metrics(self, registry: CollectorRegistry) -> None:
        """Phase runs by state, the ``events.forge`` stream, the WatchPhaseRun fan-out."""
        assert self.runs is not None and self._bus is not None  # register() ran
        self._collectors = [PhaseRunsCollector(self.config.db_path),
                            BusStreamCollector(self._bus.config.url, produced=[BUS_STREAM])]
        for collector in self._collectors:
            registry.register(collector)
        self.runs.fanout.bind_metrics(registry)

    async def close(self) -> None:
        for collector in self._collectors:
            collector.close()
        if self.runs is not None:
            await self.runs.aclose()
        for ch in self._channels:
            await ch.close()
        if self._bus is not None:
            await self._bus.aclose()
        if self.store is not None:
            self.store.close()


def main() -> None:
    forge = Forge(ForgeConfig.from_env())
    run_service("forge", forge.register, on_shutdown=forge.close,
                dependencies={"redis": redis_ping(BusConfig.from_env().url)}, bind_metrics=forge.bind_metrics)
