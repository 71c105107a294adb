"""HealthWatcher: runs the probes, keeps the :class:`HealthBook`, fans out changes.

Components: one per target service (``components/<svc>``, kind SERVICE),
``components/valkey`` (DEPENDENCY) and ``components/envoy`` (EDGE); Valkey and Envoy are
UNKNOWN with the message "not configured" when their address is not set.

Error rate per service: from its Prometheus endpoint when the target has one (delta of
``grpc_server_handled_total`` over ``error_window_s``, health/reflection excluded,
judged for DEGRADED); otherwise the fraction of failed health Checks over the window
(reported only). Valkey and Envoy serve none of our RPCs: error rate 0.

Every status change is delivered at once to subscribers (``subscribe()``), to
listeners (the alert evaluator) and, as a ``HealthChanged`` event, to the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from dataclasses import replace
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import httpx

from services.monitoring.config import MonitoringConfig, Target
from services.monitoring.convert import component_to_proto
from services.monitoring.events import EventPublisher
from services.monitoring.health import (
    Change,
    Component,
    HealthBook,
    Kind,
    ProbeWindow,
    Status,
    Thresholds,
    overall_status,
)
from services.monitoring.probes import EnvoyProbe, MetricsScraper, Report, ServiceProbe, ValkeyProbe
from services.monitoring.promtext import error_rate, pick_baseline
from services.monitoring.series import Sample
from services.shared.fanout import Fanout, Watcher
from services.shared.tasks import cancel_and_wait

__all__ = ["ENVOY", "VALKEY", "HealthWatcher", "component_name"]

_HEALTH_KEY = "health"

_log = logging.getLogger(__name__)

VALKEY = "components/valkey"
ENVOY = "components/envoy"


def component_name(service: str) -> str:
    return f"components/{service}"


class HealthWatcher:
    """Owns the probes of every component and the latest state."""

    def __init__(
        self,
        config: MonitoringConfig,
        *,
        publisher: EventPublisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._publisher = publisher
        self.book = HealthBook(
            Thresholds(config.degraded_latency_s, config.degraded_error_rate, config.min_calls_for_error_rate),
            clock,
        )
        #: Hands every status change to the WatchSystemHealth streams.
        self.fanout: Fanout[str, Change] = Fanout("health")
        self._listeners: list[Callable[[Change], None]] = []
        self._scrape_listeners: list[Callable[[str, float, list[Sample]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.scrapers: dict[str, MetricsScraper] = {}
        self.config = replace(config, targets=())
        for target in config.targets:
            self.add_target(target)
        self._add_valkey_envoy()

    def add_target(self, target: Target) -> None:
        """Watch one more service (before :meth:`start`), e.g. the monitoring service itself."""
        self.config = self.config.with_target(target)
        self.book.add(component_name(target.name), Kind.SERVICE, target.address)
        if target.metrics_address:
            self.scrapers[target.name] = MetricsScraper(
                target.metrics_address, timeout_s=self.config.probe_timeout_s,
                keep_s=self.config.error_window_s, clock=self._clock,
            )

    def _add_valkey_envoy(self) -> None:
        # The endpoint is shown to every viewer (GetSystemHealth, the System page): never
        # the password REDIS_URL carries (the embedded Valkey's, or your Redis').
        config = self.config
        self.book.add(VALKEY, Kind.DEPENDENCY, without_password(config.redis_url or ""),
                      message="" if config.redis_url else "not configured: REDIS_URL is not set")
        self.book.add(ENVOY, Kind.EDGE, f"http://{config.envoy_admin_addr}" if config.envoy_admin_addr else "",
                      message="" if config.envoy_admin_addr else "not configured: AF_ENVOY_ADMIN_ADDR is not set")

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start every probe (call inside the running event loop)."""
        c = self.config
        for target in c.targets:
            self._spawn(self._service_probe(target).run(), f"probe {target.name}")
            scraper = self.scrapers.get(target.name)
            if scraper is not None:
                self._spawn(self._metrics_loop(target, scraper), f"metrics {target.name}")
        if c.redis_url:
            probe = ValkeyProbe(c.redis_url, self._reporter(VALKEY),
                                interval_s=c.probe_interval_s, timeout_s=c.probe_timeout_s)
            self._spawn(probe.run(), "probe valkey")
        if c.envoy_admin_addr:
            envoy = EnvoyProbe(c.envoy_admin_addr, self._reporter(ENVOY),
                               interval_s=c.probe_interval_s, timeout_s=c.probe_timeout_s)
            self._spawn(envoy.run(), "probe envoy")
        if self._publisher is not None:
            self._spawn(self._publisher.run(), "event publisher")

    async def stop(self) -> None:
        self.fanout.close()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        for scraper in self.scrapers.values():
            await scraper.aclose()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("%s crashed", name)
                raise

        self._tasks.append(asyncio.ensure_future(guarded()))

    def _service_probe(self, target: Target) -> ServiceProbe:
        name = component_name(target.name)
        on_check = None
        if target.name not in self.scrapers:
            window = ProbeWindow(self.config.error_window_s, self._clock)

            def on_check(ok: bool) -> None:
                window.add(ok)
                rate, n = window.rate()
                self._apply(self.book.set_error_rate(name, rate, n, judged=False))

        return ServiceProbe(
            target, self._reporter(name),
            interval_s=self.config.probe_interval_s, timeout_s=self.config.probe_timeout_s,
            reconnect_initial_s=self.config.reconnect_initial_s, reconnect_max_s=self.config.reconnect_max_s,
            on_check=on_check,
        )

    async def _metrics_loop(self, target: Target, scraper: MetricsScraper) -> None:
        name = component_name(target.name)
        while True:
            try:
                scrape = await scraper.scrape()
            except (httpx.HTTPError, ValueError) as exc:
                _log.debug("metrics scrape of %s failed: %s", target.name, exc)
            else:
                for listener in self._scrape_listeners:
                    try:
                        listener(target.name, scrape.time, scraper.last_samples)
                    except Exception:  # noqa: BLE001 - a listener must not stop the scrapes
                        _log.exception("scrape listener failed")
                baseline = pick_baseline(scraper.before(scrape), scrape.time, self.config.error_window_s)
                rate, calls = error_rate(scrape, baseline)
                self._apply(self.book.set_error_rate(name, rate, calls, judged=True))
            await asyncio.sleep(self.config.probe_interval_s)

    # -- changes -------------------------------------------------------------------
    def _reporter(self, name: str) -> Report:
        def report(status: Status, message: str, latency_s: float | None, checked: bool) -> None:
            self._apply(self.book.report(name, status, message=message, latency_s=latency_s, checked=checked))

        return report

    def _apply(self, change: Change | None) -> None:
        if change is None:
            return
        c = change.component
        _log.info("component %s: %s -> %s %s", c.name, change.previous.name, c.status.name, c.message)
        self.fanout.publish(_HEALTH_KEY, change)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - one listener must not break the others
                _log.exception("health listener failed")
        if self._publisher is not None:
            event = self._publisher.envelope(c.name)
            event.health_changed.component.CopyFrom(component_to_proto(c, self._clock()))
            event.health_changed.previous_status = int(change.previous)
            self._publisher.submit(event)

    def add_listener(self, listener: Callable[[Change], None]) -> None:
        self._listeners.append(listener)

    def add_scrape_listener(self, listener: Callable[[str, float, list[Sample]], None]) -> None:
        """Call ``listener(service, time, samples)`` with every periodic metrics scrape."""
        self._scrape_listeners.append(listener)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Watcher[str, Change]]:
        """A watcher (of the one fan-out) that receives every status change while the
        context is open; a :class:`~services.shared.fanout.Gap` when it fell more than
        its buffer behind (send a full snapshot then)."""
        watcher = await self.fanout.watch([_HEALTH_KEY])
        try:
            yield watcher
        finally:
            await watcher.close()

    # -- reads ---------------------------------------------------------------------
    def now(self) -> float:
        return self._clock()

    def system(self, kinds: Iterable[Kind] = ()) -> tuple[Status, list[Component]]:
        """Overall status and the components (of ``kinds``; all when empty)."""
        components = self.book.snapshot(kinds)
        return overall_status(components), components


def without_password(url: str) -> str:
    """``url`` with the password of its userinfo removed (RFC 3986 §3.2.1 deprecates
    ``user:password@`` in URIs shown to anyone): ``redis://agentforge:s3cret@h:6379/0`` →
    ``redis://agentforge@h:6379/0``. Anything else is returned unchanged."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host))
