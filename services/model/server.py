"""Wiring of the model registry process.

``create_server`` builds the adapters (SQLite :class:`Registry`, :class:`ArtifactFiles`,
the :class:`EventBus`), hands them to :class:`ModelRegistry`, that to the servicer, and
starts the shared gRPC server plus the two background loops of the process: the outbox
relay (publishes ModelVersionCreated / AliasMoved to ``events.model``) and the training
hand-off consumer group on ``events.training``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field

import grpc.aio
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from agentforge.forge.v1 import forge_service_pb2_grpc
from agentforge.model.v1 import model_service_pb2, model_service_pb2_grpc
from services.model.artifacts import ArtifactFiles
from services.model.config import ModelConfig
from services.model.domain import ModelRegistry
from services.model.events import outbox_pending
from services.model.handoff import HandoffConsumer
from services.model.metrics import ArtifactCollector
from services.model.servicer import ModelServicer
from services.model.store import Registry
from services.shared.bus import BusConfig, EventBus
from services.shared.client import make_channel
from services.shared.readiness import redis_ping
from services.shared.config import ServerConfig
from services.shared.logging import configure_logging
from services.shared.metrics import BusStreamCollector
from services.shared.outbox import OutboxRelay
from services.shared.tracing import configure_tracing
from services.shared.server import Service, build_server
from services.shared.tasks import cancel_and_wait

__all__ = ["ModelApp", "SERVICE_NAME", "create_server", "main"]

SERVICE_NAME = "model"
FULL_NAME = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name


@dataclass
class ModelApp:
    """The running registry: the gRPC service and what it owns."""

    service: Service
    registry: ModelRegistry
    bus: EventBus
    relay: OutboxRelay
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: The domain metrics' collectors (their Redis clients are closed with the app).
    collectors: list[Collector] = field(default_factory=list)
    #: Channels to peers (the forge, for the hand-off), closed with the app.
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def server(self) -> grpc.aio.Server:
        return self.service.server

    async def close(self) -> None:
        """Stop the server (graceful), the loops, then close the bus and the database."""
        await self.service.shutdown()
        self._stop.set()
        await cancel_and_wait(self.tasks)
        for channel in self.channels:
            await channel.close()
        self.registry.store.set_event_listener(None)
        await self.relay.aclose()
        with contextlib.suppress(Exception):
            await self.relay.drain()  # last chance for events of the final RPCs
        await self.registry.close()
        await self.bus.aclose()
        self.registry.store.close()
        for collector in self.collectors:
            if isinstance(collector, BusStreamCollector):
                collector.close()


async def create_server(
    config: ModelConfig,
    *,
    server_config: ServerConfig | None = None,
    bus_config: BusConfig | None = None,
) -> ModelApp:
    """Build and start the registry; ``app.port`` is the bound gRPC port."""
    server_config = server_config or ServerConfig.from_env(SERVICE_NAME)
    bus = EventBus(bus_config or BusConfig.from_env())
    store = Registry(config.db_path)
    registry = ModelRegistry(store, ArtifactFiles(config.artifacts_dir), max_artifact_bytes=config.max_artifact_bytes,
                             upload_sync_bytes=config.upload_sync_bytes)
    relay = OutboxRelay("model", pending=outbox_pending(store), ack=store.outbox_ack, run=store.db, bus=bus,
                        stream=config.events_stream, poll_s=config.outbox_poll_s, size=store.outbox_size)
    store.set_event_listener(relay.notify)

    def register(server: grpc.aio.Server) -> list[str]:
        servicer = ModelServicer(registry, upload_idle_sync_s=config.upload_idle_sync_s)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
        return [FULL_NAME]

    collectors: list[Collector] = []

    def bind_metrics(prometheus: CollectorRegistry) -> None:
        collectors.extend([
            ArtifactCollector(registry),
            BusStreamCollector(bus.config.url, produced=[config.events_stream],
                               consumed=[(config.training_stream, config.consumer_group)] if config.handoff_enabled
                               else []),
        ])
        for collector in collectors:
            prometheus.register(collector)
        relay.bind_metrics(prometheus)

    try:
        service = await build_server(server_config, SERVICE_NAME, register,
                                     dependencies={"redis": redis_ping(bus.config.url)}, bind_metrics=bind_metrics)
    except BaseException:
        await bus.aclose()
        store.close()
        raise
    app = ModelApp(service, registry, bus, relay, collectors=collectors)
    relay.start()
    if config.handoff_enabled:
        forge = None
        if config.forge_addr:  # channel made here: after any fork, in the service's loop
            forge_channel = make_channel(config.forge_addr, idempotent_methods=("agentforge.forge.v1.ForgeService",))
            app.channels.append(forge_channel)
            forge = forge_service_pb2_grpc.ForgeServiceStub(forge_channel)
        consumer = HandoffConsumer(bus, registry, stream=config.training_stream, group=config.consumer_group,
                                   default_model=config.default_model, forge=forge)
        app.tasks.append(asyncio.create_task(consumer.run(app._stop), name="model training hand-off"))
    await registry.resume_exports()
    return app


async def _serve() -> None:
    app = await create_server(ModelConfig.from_env())
    await app.service.serve_forever(
        on_shutdown=app.close,
        on_ready=lambda: print(app.service.ready_line(), file=sys.stdout, flush=True),
    )


def main() -> None:
    """Process entry point (``python -m services.model``)."""
    server_config = ServerConfig.from_env(SERVICE_NAME)
    configure_logging(SERVICE_NAME, server_config.log_level, fmt=server_config.log_format)
    configure_tracing(SERVICE_NAME)
    asyncio.run(_serve())
