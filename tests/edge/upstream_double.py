"""TEST DOUBLE for the edge tests only: one process serving all five service names.

It is NOT the monitoring service. It stands in behind Envoy until the real services
exist, so the edge (routes, transcoding, grpc-web, CORS, reflection, health checks)
can be tested through a real Envoy against a real grpc.aio server built with the
shared runtime (services/shared/server.py: interceptors, validation, health,
reflection, graceful shutdown).

- ``MonitoringService.GetSystemHealth`` returns a fixed snapshot (one component).
- ``MonitoringService.WatchSystemHealth`` streams a fresh snapshot every
  ``AF_EDGE_DOUBLE_PERIOD`` seconds (default 0.25); on SIGTERM the shared runtime ends
  it with UNAVAILABLE and a final ``stream_end`` message, as for every real stream.
- ``MonitoringService.WatchAlerts`` is a watch with nothing to say: it never sends an
  event, so all the client sees are the shared runtime's heartbeats
  (``AF_STREAM_HEARTBEAT_S``), as on a real quiet watch.
- ``MonitoringService.GetComponentHealth`` of ``components/slow-<ms>`` answers after
  ``<ms>`` milliseconds (a legitimately long unary call, for the edge's timeouts), and
  ``AcknowledgeAlert`` of ``alerts/slow-<ms>`` likewise (a non-read unary route).
- The other four services are registered with their generated base servicers
  (every method UNIMPLEMENTED) so their health status and reflection exist.

Run: ``python -m tests.edge.upstream_double`` (cwd = repo root, PYTHONPATH=.:gen/python).
Prints the shared runtime's ready line on stdout.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from agentforge.forge.v1 import forge_service_pb2, forge_service_pb2_grpc
from agentforge.model.v1 import model_service_pb2, model_service_pb2_grpc
from agentforge.monitoring.v1 import (
    alert_pb2,
    health_pb2,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    request_response_pb2,
)
from agentforge.realtime.v1 import realtime_service_pb2, realtime_service_pb2_grpc
from agentforge.training.v1 import training_service_pb2, training_service_pb2_grpc
from services.shared.config import ServerConfig
from services.shared.logging import configure_logging
from services.shared.server import build_server

__all__ = ["EdgeTestMonitoringDouble", "fixed_system_health", "main"]

_START = time.time()


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def fixed_system_health() -> health_pb2.SystemHealth:
    """The canned snapshot the double serves (check_time is the time of the call)."""
    component = health_pb2.ComponentHealth(
        name="components/edge-test-double",
        kind=health_pb2.COMPONENT_KIND_SERVICE,
        status=health_pb2.HEALTH_STATUS_SERVING,
        latency=duration_pb2.Duration(nanos=1_500_000),
        error_rate=0.0,
        uptime=duration_pb2.Duration(seconds=int(time.time() - _START)),
        last_change_time=timestamp_pb2.Timestamp(seconds=int(_START)),
        last_check_time=_now(),
        endpoint="127.0.0.1:0",
    )
    return health_pb2.SystemHealth(
        status=health_pb2.HEALTH_STATUS_SERVING, components=[component], check_time=_now()
    )


class EdgeTestMonitoringDouble(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    """Test double of MonitoringService's two health RPCs and a quiet WatchAlerts, for the edge tests."""

    def __init__(self, period: float) -> None:
        self.period = period

    async def GetSystemHealth(
        self, request: request_response_pb2.GetSystemHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.SystemHealth:
        return fixed_system_health()

    async def GetComponentHealth(
        self, request: request_response_pb2.GetComponentHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.ComponentHealth:
        await _slow(request.name, "components/slow-", context)
        return health_pb2.ComponentHealth(name=request.name, kind=health_pb2.COMPONENT_KIND_SERVICE,
                                          status=health_pb2.HEALTH_STATUS_SERVING)

    async def AcknowledgeAlert(
        self, request: request_response_pb2.AcknowledgeAlertRequest, context: grpc.aio.ServicerContext
    ) -> alert_pb2.Alert:
        await _slow(request.name, "alerts/slow-", context)
        return alert_pb2.Alert(name=request.name)

    async def WatchSystemHealth(
        self, request: request_response_pb2.WatchSystemHealthRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.SystemHealth]:
        # Streams until cancelled: on SIGTERM the shared runtime ends it with a stream_end
        # UNAVAILABLE message and status, as it does for every real service's stream.
        while True:
            yield fixed_system_health()
            await asyncio.sleep(self.period)

    async def WatchAlerts(
        self, request: request_response_pb2.WatchAlertsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[alert_pb2.AlertEvent]:
        # Quiet until cancelled: the runtime's heartbeats are all that flows.
        await asyncio.Event().wait()
        yield alert_pb2.AlertEvent()  # unreachable; makes this an async generator


async def _slow(name: str, prefix: str, context: grpc.aio.ServicerContext) -> None:
    if not name.startswith(prefix) or not name.removeprefix(prefix).isdigit():
        await context.abort(grpc.StatusCode.NOT_FOUND, f"{name} is not a {prefix}<ms> name")
    await asyncio.sleep(int(name.removeprefix(prefix)) / 1000)


async def _serve() -> None:
    config = ServerConfig.from_env("monitoring")
    configure_logging("edge-test-double", config.log_level, fmt=config.log_format)
    double = EdgeTestMonitoringDouble(float(os.environ.get("AF_EDGE_DOUBLE_PERIOD", "0.25")))

    def register(server: grpc.aio.Server) -> list[str]:
        monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(double, server)
        training_service_pb2_grpc.add_TrainingServiceServicer_to_server(
            training_service_pb2_grpc.TrainingServiceServicer(), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            model_service_pb2_grpc.ModelServiceServicer(), server)
        realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(
            realtime_service_pb2_grpc.RealtimeServiceServicer(), server)
        forge_service_pb2_grpc.add_ForgeServiceServicer_to_server(
            forge_service_pb2_grpc.ForgeServiceServicer(), server)
        return [
            module.DESCRIPTOR.services_by_name[name].full_name
            for module, name in (
                (monitoring_service_pb2, "MonitoringService"),
                (training_service_pb2, "TrainingService"),
                (model_service_pb2, "ModelService"),
                (realtime_service_pb2, "RealtimeService"),
                (forge_service_pb2, "ForgeService"),
            )
        ]

    service = await build_server(config, "monitoring", register)
    await service.serve_forever(on_ready=lambda: print(service.ready_line(), flush=True))


def main() -> None:
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
