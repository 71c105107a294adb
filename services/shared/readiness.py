"""Readiness: a service's grpc.health.v1 status follows the dependencies it cannot work without.

A service whose Redis is away cannot enqueue, publish or follow; it should say so
instead of answering SERVING while every call fails. :class:`DependencyReadiness` runs
each dependency's check every ``interval_s``; after ``trip_after`` consecutive failures
of any check it sets every status of the server (``""`` and each service name)
NOT_SERVING, and SERVING again as soon as all checks pass. The monitoring service's
probes watch these statuses, so system health shows the dependent services NOT_SERVING
(and Valkey itself, which it PINGs) for as long as the outage lasts. Statuses are
never touched after graceful shutdown has begun (:class:`HealthService` ignores sets).

A check is an async callable that returns when the dependency is usable and raises
otherwise; :func:`redis_ping` builds the one for Redis on its own connection, so a
pool exhausted by other work does not make the service look down (or up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from grpc_health.v1 import health_pb2
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.shared.health import HealthService

__all__ = ["Check", "DependencyReadiness", "redis_ping"]

_log = logging.getLogger(__name__)

#: Returns when the dependency is usable; raises (anything) when it is not.
Check = Callable[[], Awaitable[object]]


class _RedisPing:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self._timeout = timeout_s
        self._client: Redis | None = None

    async def __call__(self) -> object:
        if self._client is None:  # created in the loop that runs the checks
            self._client = Redis.from_url(self.url, socket_timeout=self._timeout,
                                          socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0))
        return await self._client.ping()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def redis_ping(url: str, timeout_s: float = 1.0) -> Check:
    """A check that PINGs Redis at ``url`` on a connection of its own."""
    return _RedisPing(url, timeout_s)


class DependencyReadiness:
    """Keeps ``health`` NOT_SERVING while any of ``checks`` fails (see the module doc)."""

    def __init__(
        self,
        health: HealthService,
        services: Iterable[str],
        checks: Mapping[str, Check],
        *,
        interval_s: float = 0.5,
        timeout_s: float = 1.0,
        trip_after: int = 2,
    ) -> None:
        self._health = health
        self._services = ["", *services]
        self._checks = dict(checks)
        self._interval = interval_s
        self._timeout = timeout_s
        self._trip_after = max(1, trip_after)
        self._failures = 0
        #: Names of the dependencies whose last check failed.
        self.failing: set[str] = set()
        self.ready = True

    async def check_once(self) -> bool:
        """Run every check once and update the statuses; True when all passed."""
        failing = set()
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                failing.add(name)
                if name not in self.failing:
                    _log.warning("dependency %s unavailable: %r", name, exc)
        if failing:
            self._failures += 1
        else:
            self._failures = 0
            if self.failing:
                _log.warning("dependencies available again: %s", sorted(self.failing))
        self.failing = failing
        ready = not failing or self._failures < self._trip_after
        if ready != self.ready:
            self.ready = ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in self._services:
                await self._health.set(service, status)
            _log.warning("readiness: %s%s", "SERVING" if ready else "NOT_SERVING",
                         "" if ready else f" ({', '.join(sorted(failing))} unavailable)")
        return not failing

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled."""
        try:
            while True:
                await self.check_once()
                await asyncio.sleep(self._interval)
        finally:
            for check in self._checks.values():
                close = getattr(check, "aclose", None)
                if close is not None:
                    try:
                        await close()
                    except Exception:  # noqa: BLE001
                        pass
