"""Server bootstrap shared by the five services.

``build_server`` wires a grpc.aio server: the interceptor chain, keepalive and size
limits from :class:`ServerConfig`, grpc.health.v1 with one status per service, server
reflection v1 and v1alpha (grpcurl needs no proto files) and the Prometheus endpoint. The returned
:class:`Service` is started; ``serve_forever`` waits for SIGTERM/SIGINT, then marks
every health status NOT_SERVING and drains open RPCs for ``grace_seconds``.

Streams that never end by themselves (``Watch*``, ``Subscribe``) do not hold the server
for the grace period: ``build_server`` creates the stop event
(:attr:`Service.stop_requested`) before the interceptors, and the moment it is set the
stream interceptor ends every open stream with a ``stream_end`` field with UNAVAILABLE
"server shutting down" (see :class:`~services.shared.interceptors.StreamEndInterceptor`).
Handlers may watch the same event to stop their own work.

Readiness: ``build_server(..., dependencies={"redis": redis_ping(url)})`` keeps every
health status of the server NOT_SERVING while a dependency's check fails, and SERVING
again once it passes (:mod:`services.shared.readiness`); the task stops at shutdown.

With metrics on, the Prometheus endpoint also has ``agentforge_event_loop_lag_seconds``
(:mod:`services.shared.looplag`): how late the service's event loop runs a 100 ms timer,
i.e. how long something blocked it.

A service's entry point is typically::

    def register(server: grpc.aio.Server) -> list[str]:
        training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
        return [training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name]

    run_service("training", register)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from services.shared import revocation
from services.shared.authz import set_service_identity
from services.shared.config import ServerConfig
from services.shared.errors import DOMAIN
from services.shared.idempotency import IdempotencyInterceptor, IdempotencyKeys
from services.shared.health import HealthService
from services.shared.interceptors import StopEvent, default_interceptors
from services.shared.logging import configure_logging
from services.shared.looplag import EventLoopLag
from services.shared.metrics import GrpcServerMetrics, MetricsEndpoint, start_metrics_endpoint
from services.shared.readiness import Check, DependencyReadiness
from services.shared.tasks import cancel_and_wait
from services.shared.tracing import configure_tracing

__all__ = ["BindMetrics", "Register", "Service", "build_server", "run_service", "serve"]

_log = logging.getLogger(__name__)

#: Adds a service's domain metrics to the server's Prometheus registry.
BindMetrics = Callable[[CollectorRegistry], None]

#: Adds servicers to the server and returns the full names of the services it added
#: (may be a coroutine function, for services that connect to Redis etc. first).
Register = Callable[[grpc.aio.Server], Iterable[str] | Awaitable[Iterable[str]]]


@dataclass
class Service:
    """A started gRPC server with its health, metrics and bound ports."""

    name: str
    config: ServerConfig
    server: grpc.aio.Server
    health: HealthService
    port: int
    service_names: list[str]
    registry: CollectorRegistry
    metrics: MetricsEndpoint | None = None
    #: Set by SIGTERM/SIGINT, :meth:`request_stop` or :meth:`shutdown`, before the grace
    #: period: ``serve_forever`` then shuts down, and open streams end with UNAVAILABLE
    #: (``build_server`` hands this same event to the interceptors).
    stop_requested: asyncio.Event = field(default_factory=StopEvent)
    _shutdown: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Follows the dependencies given to ``build_server`` (None without any).
    readiness: DependencyReadiness | None = None
    _readiness_task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: Holds the process's revocation list (released at shutdown).
    _revocations: bool = field(default=False, repr=False)
    #: Measures the event loop's lag into ``agentforge_event_loop_lag_seconds`` (metrics on).
    loop_lag: EventLoopLag | None = None
    _loop_lag_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics is None else self.metrics.port

    def ready_line(self) -> str:
        """The one machine-readable JSON line the launcher waits for."""
        return json.dumps(
            {
                "event": "ready",
                "service": self.name,
                "grpc_port": self.port,
                "metrics_port": self.metrics_port,
                "services": self.service_names,
            },
            separators=(",", ":"),
        )

    async def set_serving(self, service: str, serving: bool) -> None:
        """Flip one service's health status (``""`` = the whole server)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(service, status)

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first, then drain open RPCs for ``grace`` seconds.

        Idempotent: a second call waits for the first one to finish.
        """
        self.stop_requested.set()
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._do_shutdown(grace))
        await asyncio.shield(self._shutdown)

    async def _do_shutdown(self, grace: float | None) -> None:
        grace = self.config.grace_seconds if grace is None else grace
        _log.info("shutting down", extra={"grace_seconds": grace})
        await self.health.enter_graceful_shutdown()
        if self._readiness_task is not None:
            await cancel_and_wait([self._readiness_task])
        if self._loop_lag_task is not None:
            await cancel_and_wait([self._loop_lag_task])
        await self.server.stop(grace)
        if self._revocations:
            self._revocations = False
            await revocation.release()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        _log.info("stopped")

    async def serve_forever(
        self,
        *,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        on_ready: Callable[[], None] | None = None,
        signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    ) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`shutdown`), then stop gracefully.

        ``on_ready`` runs once the signal handlers are installed, so whoever waits
        for the ready line can signal right away.
        """
        loop = asyncio.get_running_loop()
        installed = []
        for sig in signals:
            loop.add_signal_handler(sig, self.request_stop)
            installed.append(sig)
        try:
            if on_ready is not None:
                on_ready()
            await self.stop_requested.wait()
            await self.shutdown()
            if on_shutdown is not None:
                await on_shutdown()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


#: grpc.reflection.v1, the stable name of the reflection API (grpcurl and current gRPC
#: tools ask for it first); v1alpha stays for older clients.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _reflection_v1_descriptor() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the default pool.

    grpcio-reflection ships v1alpha only. v1 is the same file under another package
    (identical messages and field numbers, so identical bytes on the wire): the
    descriptor is v1alpha's, renamed, so that reflection can describe v1 itself.
    """
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = name, "grpc.reflection.v1"
    for message in proto.message_type:
        for f in message.field:
            if f.type_name.startswith(old):
                f.type_name = new + f.type_name[len(old):]
    for service in proto.service:
        for m in service.method:
            m.input_type = new + m.input_type[len(old):]
            m.output_type = new + m.output_type[len(old):]
    pool.AddSerializedFile(proto.SerializeToString())


def _enable_reflection_v1(service_names: list[str], server: grpc.aio.Server) -> None:
    """Serve grpc.reflection.v1 with grpcio-reflection's v1alpha servicer (same wire format)."""
    _reflection_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),))


def _idempotency_keys(config: ServerConfig, service_name: str) -> IdempotencyKeys:
    if not config.data_dir:
        return IdempotencyKeys()
    return IdempotencyKeys(Path(config.data_dir) / "idempotency" / f"{service_name}.db")


async def build_server(
    config: ServerConfig,
    service_name: str,
    register: Register,
    *,
    reflect_extra: Iterable[str] = (),
    dependencies: Mapping[str, Check] | None = None,
    bind_metrics: BindMetrics | None = None,
) -> Service:
    """Create, wire and start the server; returns it with the ports actually bound.

    ``bind_metrics``: called with the server's Prometheus registry once ``register`` has
    run (when metrics are enabled), to add the service's domain metrics beside the
    ``grpc_server_*`` ones (collectors computed on scrape, fan-outs' gauges; see
    docs/metrics.md).

    ``dependencies``: checks of what the service cannot work without (e.g.
    ``{"redis": redis_ping(url)}``); while one fails, every health status of the server
    is NOT_SERVING (:class:`~services.shared.readiness.DependencyReadiness`).

    ``reflect_extra``: full names of services this server does not implement but lists
    in reflection (their descriptors must be in the default pool, i.e. imported), so
    grpcurl through the edge, which routes reflection to one service, sees the whole
    API. Unlike the names ``register`` returns, they get no health status here.
    """
    set_service_identity(service_name)
    registry = CollectorRegistry(auto_describe=True)
    metrics = GrpcServerMetrics(registry) if config.metrics_enabled else None
    stop = StopEvent()  # Service.stop_requested; the stream interceptor watches it
    server = grpc.aio.server(
        interceptors=default_interceptors(metrics, domain=DOMAIN, stop=stop,
                                          stream_max_quiet_s=config.stream_max_quiet_s,
                                          stream_heartbeat_s=config.stream_heartbeat_s, service=service_name,
                                          idempotency=IdempotencyInterceptor(_idempotency_keys(config, service_name))),
        options=config.grpc_options(),
    )
    added = register(server)
    names = list(await added if inspect.isawaitable(added) else added)
    if metrics is not None and bind_metrics is not None:
        bind_metrics(registry)
    health = HealthService(resend_interval_s=config.stream_heartbeat_s)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflected = [*names, *reflect_extra, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME, REFLECTION_V1]
    reflection.enable_server_reflection(reflected, server)
    _enable_reflection_v1(reflected, server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    # The mesh's revoked tokens (services/shared/revocation.py), read before serving.
    redis_url = os.environ.get("REDIS_URL", "").strip()
    if redis_url:
        await revocation.acquire(redis_url)
    await server.start()
    endpoint = None
    if metrics is not None:
        try:
            endpoint = start_metrics_endpoint(registry, config.metrics_host, config.metrics_port)
        except OSError:
            await server.stop(None)
            if redis_url:
                await revocation.release()
            raise
    for name in names:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    service = Service(service_name, config, server, health, port, names, registry, endpoint,
                      stop_requested=stop, _revocations=bool(redis_url))
    if dependencies:
        service.readiness = DependencyReadiness(health, names, dependencies)
        service._readiness_task = asyncio.ensure_future(service.readiness.run())
    if metrics is not None:
        service.loop_lag = EventLoopLag(registry)
        service._loop_lag_task = asyncio.ensure_future(service.loop_lag.run())
    _log.info("ready", extra={"grpc_port": port, "metrics_port": service.metrics_port,
                              "services": names})
    return service


async def serve(
    config: ServerConfig,
    service_name: str,
    register: Register,
    *,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    stdout: TextIO | None = None,
    dependencies: Mapping[str, Check] | None = None,
    bind_metrics: BindMetrics | None = None,
) -> None:
    """Build the server, print the ready line on stdout, serve until a signal."""
    service = await build_server(config, service_name, register, dependencies=dependencies,
                                 bind_metrics=bind_metrics)
    out = stdout or sys.stdout
    await service.serve_forever(
        on_shutdown=on_shutdown,
        on_ready=lambda: print(service.ready_line(), file=out, flush=True),
    )


def run_service(
    service_name: str,
    register: Register,
    *,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    dependencies: Mapping[str, Check] | None = None,
    bind_metrics: BindMetrics | None = None,
) -> None:
    """Process entry point: config from env, JSON logging, tracing, serve until SIGTERM."""
    config = ServerConfig.from_env(service_name)
    configure_logging(service_name, config.log_level, fmt=config.log_format)
    configure_tracing(service_name)
    asyncio.run(serve(config, service_name, register, on_shutdown=on_shutdown, dependencies=dependencies,
                      bind_metrics=bind_metrics))
