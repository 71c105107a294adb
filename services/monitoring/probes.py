"""Probe adapters: the I/O that feeds the health domain.

* :class:`ServiceProbe` — one per service: a long-lived grpc.health.v1 ``Watch`` stream
  (status changes arrive at once; a broken stream is NOT_SERVING immediately, then the
  stream is re-opened with exponential backoff) plus a periodic ``Check`` that measures
  the round trip.
* :class:`ValkeyProbe` — ``PING`` every interval, with its latency.
* :class:`EnvoyProbe` — Envoy admin ``GET /ready`` (200 = live) and
  ``GET /clusters?format=json`` (a cluster whose hosts all fail health checks makes the
  edge DEGRADED).
* :class:`MetricsScraper` — fetches a service's Prometheus text and keeps the scrapes
  of the last window.

Each probe reports through a callback ``report(status, message, latency_s, checked)``;
it never raises out of ``run()`` except on cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import grpc
import grpc.aio
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agentforge.client.retry import backoff_delay
from services.monitoring.config import Target
from services.monitoring.health import Status
from services.monitoring.promtext import Scrape, parse_samples, scrape_from_samples
from services.monitoring.series import Sample
from services.shared.client import make_channel

__all__ = ["EnvoyProbe", "MetricsScraper", "Report", "ServiceProbe", "ValkeyProbe"]

_log = logging.getLogger(__name__)


class Report(Protocol):
    def __call__(self, status: Status, message: str, latency_s: float | None, checked: bool) -> None: ...


_GRPC_STATUS = {
    health_pb2.HealthCheckResponse.SERVING: (Status.SERVING, ""),
    health_pb2.HealthCheckResponse.NOT_SERVING: (Status.NOT_SERVING, "health status NOT_SERVING"),
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: (Status.NOT_SERVING, "health service unknown to the server"),
    health_pb2.HealthCheckResponse.UNKNOWN: (Status.UNKNOWN, "health status UNKNOWN"),
}


def _rpc_error(what: str, exc: grpc.aio.AioRpcError) -> str:
    return f"{what}: {exc.code().name}: {exc.details() or ''}".rstrip(": ")


class ServiceProbe:
    """Watch + periodic Check of one service's grpc.health.v1."""

    def __init__(
        self,
        target: Target,
        report: Report,
        *,
        interval_s: float,
        timeout_s: float,
        reconnect_initial_s: float,
        reconnect_max_s: float,
        on_check: Callable[[bool], None] | None = None,
    ) -> None:
        self.target = target
        self._report = report
        self._interval = interval_s
        self._timeout = timeout_s
        self._initial = reconnect_initial_s
        self._max = reconnect_max_s
        self._on_check = on_check
        backoff_ms = int(reconnect_initial_s * 1000)
        self._channel = make_channel(
            target.address,
            retry=None,
            default_timeout=None,
            options=[
                # Reconnect quickly after the service comes back.
                ("grpc.initial_reconnect_backoff_ms", max(backoff_ms, 50)),
                ("grpc.min_reconnect_backoff_ms", max(backoff_ms, 50)),
                ("grpc.max_reconnect_backoff_ms", int(reconnect_max_s * 1000)),
            ],
        )
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._request = health_pb2.HealthCheckRequest(service=target.health_service)

    async def run(self) -> None:
        try:
            await asyncio.gather(self._watch_loop(), self._check_loop())
        finally:
            await self._channel.close(None)

    async def _watch_loop(self) -> None:
        failed = 0  # watches ended in a row without a response
        while True:
            call = self._stub.Watch(self._request)
            try:
                async for response in call:
                    failed = 0
                    status, message = _GRPC_STATUS.get(response.status, (Status.UNKNOWN, "unexpected health status"))
                    self._report(status, message, None, True)
                self._report(Status.NOT_SERVING, "health watch ended: server shutting down", None, True)
            except grpc.aio.AioRpcError as exc:
                self._report(Status.NOT_SERVING, _rpc_error("health watch", exc), None, True)
            finally:
                call.cancel()
            failed += 1
            await asyncio.sleep(backoff_delay(failed, initial_s=self._initial, max_s=self._max, jitter=0.0))

    async def _check_loop(self) -> None:
        while True:
            start = time.perf_counter()
            try:
                response = await self._stub.Check(self._request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                ok = False
                self._report(Status.NOT_SERVING, _rpc_error("health check", exc), None, True)
            else:
                latency = time.perf_counter() - start
                status, message = _GRPC_STATUS.get(response.status, (Status.UNKNOWN, "unexpected health status"))
                ok = status is Status.SERVING
                self._report(status, message, latency, True)
            if self._on_check is not None:
                self._on_check(ok)
            await asyncio.sleep(self._interval)


class ValkeyProbe:
    """PING Valkey every interval."""

    def __init__(self, url: str, report: Report, *, interval_s: float, timeout_s: float) -> None:
        self._report = report
        self._interval = interval_s
        self._client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )

    async def run(self) -> None:
        try:
            while True:
                await self.probe_once()
                await asyncio.sleep(self._interval)
        finally:
            await self._client.aclose()

    async def probe_once(self) -> None:
        start = time.perf_counter()
        try:
            await self._client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means not serving
            self._report(Status.NOT_SERVING, f"PING failed: {type(exc).__name__}: {exc}", None, True)
        else:
            self._report(Status.SERVING, "", time.perf_counter() - start, True)


def unhealthy_clusters(clusters: dict[str, Any]) -> list[str]:
    """Names of clusters that have hosts, none of them healthy (admin JSON)."""
    bad = []
    for cluster in clusters.get("cluster_statuses", []):
        hosts = cluster.get("host_statuses", [])
        if not hosts:
            continue
        if not any(_host_healthy(h.get("health_status", {})) for h in hosts):
            bad.append(str(cluster.get("name", "?")))
    return sorted(bad)


def _host_healthy(health: dict[str, Any]) -> bool:
    failure_flags = (
        "failed_active_health_check", "failed_outlier_check", "failed_active_degraded_check",
        "pending_dynamic_removal", "pending_active_hc", "excluded_via_immediate_hc_fail",
        "active_hc_timeout",
    )
    if any(health.get(flag) for flag in failure_flags):
        return False
    return health.get("eds_health_status", "HEALTHY") in ("HEALTHY", "DEGRADED")


class EnvoyProbe:
    """Envoy admin ``/ready`` and ``/clusters?format=json``."""

    def __init__(self, admin_addr: str, report: Report, *, interval_s: float, timeout_s: float) -> None:
        self._report = report
        self._interval = interval_s
        self._client = httpx.AsyncClient(base_url=f"http://{admin_addr}", timeout=timeout_s)

    async def run(self) -> None:
        try:
            while True:
                await self.probe_once()
                await asyncio.sleep(self._interval)
        finally:
            await self._client.aclose()

    async def probe_once(self) -> None:
        start = time.perf_counter()
        try:
            ready = await self._client.get("/ready")
            latency = time.perf_counter() - start
            if ready.status_code != 200:
                self._report(Status.NOT_SERVING, f"/ready: HTTP {ready.status_code} {ready.text.strip()}", latency, True)
                return
            clusters = await self._client.get("/clusters", params={"format": "json"})
            clusters.raise_for_status()
            bad = unhealthy_clusters(clusters.json())
        except (httpx.HTTPError, ValueError) as exc:
            self._report(Status.NOT_SERVING, f"admin probe failed: {type(exc).__name__}: {exc}", None, True)
            return
        if bad:
            self._report(Status.DEGRADED, "clusters without healthy hosts: " + ", ".join(bad), latency, True)
        else:
            self._report(Status.SERVING, "", latency, True)


class MetricsScraper:
    """Scrapes one service's ``/metrics``; keeps the scrapes of the last window."""

    def __init__(self, address: str, *, timeout_s: float, keep_s: float, clock: Callable[[], float] = time.time) -> None:
        self.address = address
        self._client = httpx.AsyncClient(base_url=f"http://{address}", timeout=timeout_s)
        self._keep = keep_s
        self._clock = clock
        self.history: deque[Scrape] = deque()
        self.last_samples: list[Sample] = []

    async def scrape(self) -> Scrape:
        """Fetch and parse now; the scrape joins the history. Raises httpx.HTTPError
        (ValueError for text that is not the Prometheus exposition format).

        Every sample of the scrape (not only ``grpc_server_*``) is left in
        :attr:`last_samples` for the alert rules; the history keeps only the parsed
        per-method counters."""
        response = await self._client.get("/metrics")
        response.raise_for_status()
        samples = parse_samples(response.text)
        scrape = scrape_from_samples(samples, self._clock())
        self.last_samples = samples
        self.history.append(scrape)
        cutoff = scrape.time - self._keep * 2
        while self.history and self.history[0].time < cutoff:
            self.history.popleft()
        return scrape

    def before(self, scrape: Scrape) -> list[Scrape]:
        """Scrapes older than ``scrape``, oldest first."""
        return [s for s in self.history if s.time < scrape.time]

    async def aclose(self) -> None:
        await self._client.aclose()
