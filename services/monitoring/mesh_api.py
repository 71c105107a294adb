"""The monitoring service as the edge's answer for the whole mesh's reflection and health.

Envoy routes ``grpc.reflection.*`` and ``grpc.health.v1.Health`` to monitoring (a route
picks one upstream). So that ``grpcurl list``/``describe`` through the edge shows every
service, monitoring's reflection also lists the other services (:data:`API_SERVICES`;
importing their ``*_service_pb2`` modules puts the descriptors in the default pool).
So that ``Health/Check {service: "agentforge.training.v1.TrainingService"}`` through the
edge tells the truth, :class:`HealthMirror` sets that name's status in monitoring's own
health servicer from what the watcher observes of the peer:

* before the first observation the name is not set: Check is NOT_FOUND, Watch
  SERVICE_UNKNOWN;
* SERVING or DEGRADED (still answering) → SERVING; NOT_SERVING → NOT_SERVING;
  UNKNOWN → UNKNOWN.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from grpc_health.v1 import health_pb2

from agentforge.forge.v1 import forge_service_pb2
from agentforge.model.v1 import model_service_pb2
from agentforge.monitoring.v1 import monitoring_service_pb2
from agentforge.realtime.v1 import realtime_service_pb2
from agentforge.training.v1 import training_service_pb2
from services.monitoring.health import Change, Status
from services.shared.health import HealthService, ServingStatus

__all__ = ["API_SERVICES", "HealthMirror"]

#: Short service name → full gRPC service name, for the five services of the mesh.
API_SERVICES: Mapping[str, str] = {
    "training": training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    "model": model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    "realtime": realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name,
    "monitoring": monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name,
    "forge": forge_service_pb2.DESCRIPTOR.services_by_name["ForgeService"].full_name,
}

_GRPC_STATUS: Mapping[Status, ServingStatus] = {
    Status.SERVING: health_pb2.HealthCheckResponse.SERVING,
    Status.DEGRADED: health_pb2.HealthCheckResponse.SERVING,
    Status.NOT_SERVING: health_pb2.HealthCheckResponse.NOT_SERVING,
    Status.UNKNOWN: health_pb2.HealthCheckResponse.UNKNOWN,
}


class HealthMirror:
    """A watcher listener: copies component status changes into a health servicer.

    ``names`` maps a component name (``components/training``) to the gRPC service
    name whose health status follows it. Call it from the event loop (the watcher's
    probes do); updates are applied in order.
    """

    def __init__(self, health: HealthService, names: Mapping[str, str]) -> None:
        self._health = health
        self._names = dict(names)
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, change: Change) -> None:
        service = self._names.get(change.component.name)
        if service is None:
            return
        # HealthService.set takes an uncontended lock without yielding, so tasks
        # created in order apply in order.
        task = asyncio.get_running_loop().create_task(
            self._health.set(service, _GRPC_STATUS[change.component.status]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for updates still in flight (before the loop closes)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
