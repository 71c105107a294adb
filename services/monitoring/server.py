"""Wiring of the monitoring service: config → store, bus, watcher, alerts → servicer.

``create_server`` builds everything on the shared runtime (``build_server``: health,
reflection, interceptors, metrics) and starts the probes once the port is bound, so the
monitoring service can watch itself through the network like any other service.

The edge routes reflection and grpc.health.v1 here, so reflection also lists the other
services and their health names follow the watcher (:mod:`services.monitoring.mesh_api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field

import grpc.aio
from prometheus_client import CollectorRegistry

from agentforge.monitoring.v1 import monitoring_service_pb2, monitoring_service_pb2_grpc
from services.monitoring.alerts import AlertManager
from services.monitoring.config import MonitoringConfig, Target
from services.monitoring.events import EventPublisher
from services.monitoring.mesh_api import API_SERVICES, HealthMirror
from services.monitoring.servicer import MonitoringServicer
from services.monitoring.store import MonitoringStore
from services.monitoring.training_alerts import TrainingTracker
from services.monitoring.watcher import HealthWatcher, component_name
from services.shared.bus import BusConfig, EventBus
from services.shared.config import ServerConfig
from services.shared.logging import configure_logging
from services.shared.metrics import BusStreamCollector
from services.shared.tracing import configure_tracing
from services.shared.server import Service, build_server

__all__ = ["SERVICE_NAME", "MonitoringServer", "create_server", "main", "serve"]

SERVICE_NAME = "monitoring"
_FULL_NAME = monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name


@dataclass
class MonitoringServer:
    """A started monitoring service and what it owns."""

    service: Service
    watcher: HealthWatcher
    alerts: AlertManager
    store: MonitoringStore
    bus: EventBus | None
    mirror: HealthMirror | None = None
    collectors: list[BusStreamCollector] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def metrics_port(self) -> int | None:
        return self.service.metrics_port

    async def close_resources(self) -> None:
        """Stop probes and evaluation, close the bus and the database (after the server)."""
        await self.alerts.stop()
        await self.watcher.stop()
        if self.mirror is not None:
            await self.mirror.drain()
        if self.bus is not None:
            await self.bus.aclose()
        self.store.close()
        for collector in self.collectors:
            collector.close()

    async def stop(self, grace: float | None = None) -> None:
        """Open watch streams end UNAVAILABLE, the server drains, then resources close."""
        await self.service.shutdown(grace)
        await self.close_resources()


async def create_server(config: MonitoringConfig, server_config: ServerConfig) -> MonitoringServer:
    """Build and start the monitoring service (probes included)."""
    store = MonitoringStore(config.data_dir)
    bus = (EventBus(BusConfig(url=config.redis_url, publish_timeout_s=config.publish_timeout_s))
           if config.redis_url else None)
    health_events = EventPublisher(bus, config.events_stream) if bus is not None else None
    alert_events = EventPublisher(bus, config.alerts_stream) if bus is not None else None
    watcher = HealthWatcher(config, publisher=health_events)
    tracker = TrainingTracker(bus, config.training_events_stream) if bus is not None else None
    alerts = AlertManager(
        store, watcher, publisher=alert_events, tracker=tracker, config=config,
        eval_interval_s=config.alert_eval_interval_s, default_rule_for_s=config.default_rule_for_s,
        history=config.alert_history,
    )
    servicer = MonitoringServicer(watcher, alerts)

    def register(server: grpc.aio.Server) -> list[str]:
        monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(servicer, server)
        return [_FULL_NAME]

    collectors: list[BusStreamCollector] = []

    def bind_metrics(registry: CollectorRegistry) -> None:
        """The streams monitoring publishes, and the WatchSystemHealth / WatchAlerts fan-outs."""
        if config.redis_url:
            collectors.append(BusStreamCollector(config.redis_url,
                                                 produced=[config.events_stream, config.alerts_stream]))
            registry.register(collectors[-1])
        watcher.fanout.bind_metrics(registry)
        alerts.fanout.bind_metrics(registry)

    others = {name: full for name, full in API_SERVICES.items() if name != SERVICE_NAME}
    service = await build_server(server_config, SERVICE_NAME, register, reflect_extra=others.values(),
                                 bind_metrics=bind_metrics)
    own_metrics = f"127.0.0.1:{service.metrics_port}" if service.metrics_port else None
    own = config.target(SERVICE_NAME)
    if own is None:
        watcher.add_target(Target(SERVICE_NAME, f"127.0.0.1:{service.port}", own_metrics))
    elif own.metrics_address is None and own_metrics is not None:
        watcher.add_target(Target(own.name, own.address, own_metrics, own.health_service))
    # Health/Check for a peer's service name (through the edge) answers what we observe.
    mirror = HealthMirror(service.health, {component_name(t.name): others[t.name]
                                           for t in watcher.config.targets if t.name in others})
    watcher.add_listener(mirror)
    watcher.start()
    alerts.start()
    return MonitoringServer(service, watcher, alerts, store, bus, mirror, collectors)


async def serve(config: MonitoringConfig, server_config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT; prints the ready line on stdout."""
    mon = await create_server(config, server_config)
    await mon.service.serve_forever(
        on_shutdown=mon.close_resources,
        on_ready=lambda: print(mon.service.ready_line(), file=sys.stdout, flush=True),
    )


def main() -> None:
    """Process entry point (``python -m services.monitoring``)."""
    server_config = ServerConfig.from_env(SERVICE_NAME)
    configure_logging(SERVICE_NAME, server_config.log_level, fmt=server_config.log_format)
    configure_tracing(SERVICE_NAME)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(MonitoringConfig.from_env(), server_config))
