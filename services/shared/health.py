"""grpc.health.v1 servicer whose Watch streams end cleanly on graceful shutdown.

Same behaviour as ``grpc_health.v1.health.aio.HealthServicer`` (Check, List, Watch, set,
enter_graceful_shutdown), except that

* once shutdown has begun every Watch stream sends NOT_SERVING and then finishes with
  OK. Open watches (the monitoring service keeps one per service) therefore never hold
  the server for the whole grace period;
* a Watch re-sends the current status after ``resend_interval_s`` seconds without a
  change (a keepalive). The health protocol (grpc/grpc doc/health-checking.md) has no
  keepalive message and the stream may otherwise stay silent for ever, so proxies with
  a stream idle timeout (Envoy: 900 s at this edge) reset it, which gRPC clients read
  as INTERNAL. A repeated status is harmless to health clients: each message is just
  "the status is now X" (grpc-go's and grpc-java's health clients apply it as such).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.shared.errors import NotFound, clip

__all__ = ["HealthService", "ServingStatus"]

ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):
    """Per-service serving status; ``""`` is the whole server."""

    def __init__(self, resend_interval_s: float | None = None) -> None:
        self._resend = resend_interval_s or None
        self._status: dict[str, ServingStatus] = {"": _SERVING}
        self._changed = asyncio.Condition()
        self._shutting_down = False

    def status(self, service: str = "") -> ServingStatus | None:
        return self._status.get(service)

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set a status; ignored after :meth:`enter_graceful_shutdown`."""
        if self._shutting_down:
            return
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Set every status to NOT_SERVING for good and end Watch streams."""
        if self._shutting_down:
            return
        async with self._changed:
            self._shutting_down = True
            for service in self._status:
                self._status[service] = _NOT_SERVING
            self._changed.notify_all()

    async def Check(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            raise NotFound(f"unknown service {clip(request.service, 128)!r}", reason="SERVICE_NOT_FOUND")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in self._status.items():
            response.statuses[service].status = status
        return response

    async def Watch(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: ServingStatus | None = None
        resend = False
        while True:
            async with self._changed:
                status = self._status.get(request.service, _UNKNOWN)
                stopping = self._shutting_down
                if status == last and not stopping and not resend:
                    try:
                        await asyncio.wait_for(self._changed.wait(), self._resend)
                    except TimeoutError:
                        resend = True  # nothing changed for resend_interval_s: keepalive
                    continue
            if status != last or resend:
                last, resend = status, False
                yield health_pb2.HealthCheckResponse(status=status)
            if stopping:
                return
