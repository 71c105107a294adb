"""Wiring of the realtime service: bus → store → hub/bridge → servicer → shared server."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field

import grpc.aio
from prometheus_client import CollectorRegistry

from agentforge.realtime.v1 import realtime_service_pb2, realtime_service_pb2_grpc
from services.realtime.bridge import Bridge
from services.realtime.config import SERVICE_NAME, RealtimeConfig
from services.realtime.servicer import RealtimeServicer
from services.realtime.store import TopicStore
from services.realtime.subscription import Hub
from services.shared.bus import EventBus
from services.shared.fanout import BusFanout
from services.shared.readiness import redis_ping
from services.shared.logging import configure_logging
from services.shared.metrics import BusStreamCollector
from services.shared.tracing import configure_tracing
from services.shared.server import Service, build_server

__all__ = ["RealtimeServer", "create_server", "main"]

FULL_NAME = realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name


@dataclass
class RealtimeServer:
    """The started service with the parts it owns."""

    service: Service
    store: TopicStore
    hub: Hub
    bridge: Bridge
    _watcher: asyncio.Task[None] | None = field(default=None, repr=False)
    collectors: list[BusStreamCollector] = field(default_factory=list)
    _closed: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return self.service.port

    async def aclose(self) -> None:
        """Release subscriptions, the bridge and the Redis connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
        await self.hub.close()
        await self.bridge.close()
        await self.store.bus.aclose()
        for collector in self.collectors:
            collector.close()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: open subscriptions end with UNAVAILABLE, then close."""
        await self.service.shutdown(grace)
        await self.aclose()


async def create_server(config: RealtimeConfig) -> RealtimeServer:
    """Build and start the realtime service on ``config.server.port`` (0 = free)."""
    bus = EventBus(config.topic_bus)
    store = TopicStore(bus, prefix=config.key_prefix, idempotency_ttl_s=config.idempotency_ttl_s)
    # Subscriptions are fed by one fan-out (its own reader and catch-up connections), so
    # unary calls on ``bus`` never wait behind streams for a Redis connection.
    fanout = BusFanout(
        "realtime", config.topic_bus, readers=config.fanout_readers,
        catchup_connections=config.watch_connections, capacity=config.queue_size,
        max_bytes=config.queue_bytes,
        epoch_check_interval_s=config.epoch_check_interval_s, key_prefix=config.key_prefix,
    )
    watch_store = TopicStore(fanout.bus, prefix=config.key_prefix, idempotency_ttl_s=config.idempotency_ttl_s)
    hub = Hub(watch_store, config, fanout)
    servicer = RealtimeServicer(store, hub, config)

    def register(server: grpc.aio.Server) -> list[str]:
        realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(servicer, server)
        return [FULL_NAME]

    # The bridge's consumer group on each mesh stream (their producers export the streams).
    collectors = [BusStreamCollector(config.topic_bus.url,
                                     consumed=[(r.stream, config.bridge_group) for r in config.bridge_routes])]

    def bind_metrics(registry: CollectorRegistry) -> None:
        for collector in collectors:
            registry.register(collector)
        fanout.bind_metrics(registry)

    try:
        service = await build_server(config.server, SERVICE_NAME, register,
                                     dependencies={"redis": redis_ping(config.topic_bus.url)},
                                     bind_metrics=bind_metrics)
    except BaseException:
        await bus.aclose()
        await fanout.aclose()
        raise
    await hub.start()
    bridge = Bridge(store, config.bridge_routes, group=config.bridge_group, consumer=config.instance_id)
    bridge.start()

    async def close_subscriptions_on_stop() -> None:
        # Shutdown drains RPCs for the grace period; subscriptions never end on their
        # own, so end them now with UNAVAILABLE (clients resume with their cursor).
        await service.stop_requested.wait()
        await hub.close()

    watcher = asyncio.create_task(close_subscriptions_on_stop(), name="realtime-stop-watcher")
    return RealtimeServer(service, store, hub, bridge, watcher, collectors=collectors)


async def _serve(config: RealtimeConfig) -> None:
    server = await create_server(config)
    try:
        await server.service.serve_forever(
            on_shutdown=server.aclose,
            on_ready=lambda: print(server.service.ready_line(), file=sys.stdout, flush=True),
        )
    finally:
        with contextlib.suppress(Exception):
            await server.aclose()


def main() -> None:
    """Process entry point (``python -m services.realtime``)."""
    config = RealtimeConfig.from_env()
    configure_logging(SERVICE_NAME, config.server.log_level, fmt=config.server.log_format)
    configure_tracing(SERVICE_NAME)
    asyncio.run(_serve(config))
