"""Wiring of the training service: store, bus, queue, domain, servicer, worker pool.

``create_server(config, server_config)`` builds everything on the shared runtime and
returns the started :class:`~services.shared.server.Service` with its :class:`TrainingApp`;
``main()`` is the process entry point (``python -m services.training``): it prints the
ready line, serves until SIGTERM, then drains RPCs and stops the workers (each one
checkpoints its job and puts it back on the queue).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import logging

import grpc
from prometheus_client import CollectorRegistry

from services.shared.bus import BusConfig, EventBus
from services.shared.config import ServerConfig
from services.shared.metrics import BusStreamCollector
from services.shared.errors import Unavailable, as_domain_error
from services.shared.readiness import redis_ping
from services.shared.tasks import cancel_and_wait
from services.shared.logging import configure_logging
from services.shared.tracing import configure_tracing
from services.shared.server import Service, build_server, serve
from services.training.config import TrainingConfig
from services.training.jobs import JobManager
from services.training.metrics import JobsCollector, QueueCollector
from services.training.pool import WorkerPool
from services.training.queue import GROUP, JobQueue, Keys
from services.shared.outbox import OutboxRelay
from services.training.reconciler import Reconciler
from services.training.servicer import TrainingServicer
from services.training.store import Store

__all__ = ["TrainingApp", "create_server", "main"]

_log = logging.getLogger("services.training")


class TrainingApp:
    """Everything behind the gRPC server; ``start`` before serving, ``aclose`` after."""

    def __init__(self, config: TrainingConfig, *, log_format: str = "json", log_level: str = "INFO") -> None:
        self.config = config
        self.keys = Keys(config.key_prefix)
        self.store = Store(config.database_path)
        self.bus = EventBus(BusConfig(url=config.redis_url))
        self.queue = JobQueue(self.bus, self.keys, claim_idle_ms=int(config.heartbeat_timeout_s * 1000))
        self.jobs = JobManager(config, self.store, self.bus, self.queue, self.keys)
        self.servicer = TrainingServicer(self.jobs)
        self.pool = WorkerPool(config, log_format=log_format, log_level=log_level)
        self.reconciler = Reconciler(self.jobs)
        self._reconciling: asyncio.Task[None] | None = None
        #: Publishes the store's outbox (state changes, TrainingJobCompleted) onto
        #: ``events.training``, also those the workers wrote; created in :meth:`start`.
        self.relay: OutboxRelay | None = None
        self._collectors: list[JobsCollector | QueueCollector | BusStreamCollector] = []

    async def start(self) -> None:
        """Create the queue groups, enqueue orphaned jobs, start the workers and the
        reconciler. Redis being away does not stop the service from starting: the jobs
        are in the database, and the reconciler and workers catch up once it is back."""
        self.config.runs_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.queue.ensure_groups()
            recovered = await self.jobs.recover_unqueued()
            if recovered:
                _log.info("enqueued %d jobs that never reached the queue", recovered)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(as_domain_error(exc), Unavailable):
                raise
            _log.warning("Redis unavailable at start (%r); the reconciler will enqueue jobs once it is back", exc)
        self.relay = OutboxRelay("training", pending=self.store.outbox_pending, ack=self.store.outbox_ack,
                                 run=self.jobs.db,
                                 bus=self.bus, stream=self.keys.training_events,
                                 poll_s=self.config.outbox_poll_s, size=self.store.outbox_size)
        self.store.on_outbox = self.relay.notify
        self.relay.start()
        self.pool.start()
        self._reconciling = asyncio.get_running_loop().create_task(self.reconciler.run())

    def register(self, server: grpc.aio.Server) -> list[str]:
        return self.servicer.register(server)

    def bind_metrics(self, registry: CollectorRegistry) -> None:
        """Jobs, workers, queue and bus metrics, and the watch fan-out's (docs/metrics.md)."""
        claim_idle_ms = int(self.config.heartbeat_timeout_s * 1000)

        def live_workers() -> set[int]:
            return {p.pid for p in self.pool.processes.values() if p.pid is not None and p.is_alive()}

        queues = self.keys.queues()
        self._collectors = [
            JobsCollector(self.config.database_path, live_workers, self.pool.pid_of),
            QueueCollector(self.config.redis_url, self.keys, claim_idle_ms=claim_idle_ms),
            BusStreamCollector(self.config.redis_url, produced=[*queues, self.keys.training_events],
                               consumed=[(q, GROUP) for q in queues]),
        ]
        for collector in self._collectors:
            registry.register(collector)
        self.jobs.fanout.bind_metrics(registry)
        if self.relay is not None:
            self.relay.bind_metrics(registry)

    async def aclose(self) -> None:
        for collector in self._collectors:
            collector.close()
        if self._reconciling is not None:
            await cancel_and_wait([self._reconciling])
        if self.relay is not None:
            self.store.on_outbox = None
            await self.relay.aclose()
        await self.jobs.fanout.aclose()
        await self.pool.aclose()
        await self.bus.aclose()
        await self.jobs.db(self.store.close)
        self.jobs.db.close()


async def create_server(config: TrainingConfig, server_config: ServerConfig) -> tuple[Service, TrainingApp]:
    """Start the app and a gRPC server for it (the caller shuts both down)."""
    app = TrainingApp(config, log_format=server_config.log_format, log_level=server_config.log_level)
    await app.start()
    try:
        service = await build_server(server_config, "training", app.register,
                                     dependencies={"redis": redis_ping(config.redis_url)},
                                     bind_metrics=app.bind_metrics)
    except BaseException:
        await app.aclose()
        raise
    return service, app


async def _serve(config: TrainingConfig, server_config: ServerConfig) -> int:
    """Serve until SIGTERM (0), or until the worker pool gives up (1: stop cleanly, then
    exit non-zero so the launcher restarts the service whole)."""
    app = TrainingApp(config, log_format=server_config.log_format, log_level=server_config.log_level)
    await app.start()
    try:
        serving = asyncio.create_task(serve(server_config, "training", app.register,
                                             dependencies={"redis": redis_ping(config.redis_url)},
                                             bind_metrics=app.bind_metrics))
        pool_failed = asyncio.create_task(app.pool.failed.wait())
        await asyncio.wait({serving, pool_failed}, return_when=asyncio.FIRST_COMPLETED)
        if pool_failed.done() and not serving.done():
            _log.error("stopping the service: %s", app.pool.failure)
            os.kill(os.getpid(), signal.SIGTERM)  # the server's own graceful shutdown
        pool_failed.cancel()
        await serving
        return 1 if app.pool.failure else 0
    finally:
        await app.aclose()


def main() -> None:
    server_config = ServerConfig.from_env("training")
    configure_logging("training", server_config.log_level, fmt=server_config.log_format)
    configure_tracing("training")
    sys.exit(asyncio.run(_serve(TrainingConfig.from_env(), server_config)))
