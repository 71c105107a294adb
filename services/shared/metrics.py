"""Prometheus collectors with the go-grpc-prometheus names, the /metrics endpoint, and
the shared pieces of the services' domain metrics (docs/metrics.md).

Collectors live on a per-server :class:`prometheus_client.CollectorRegistry`, so
several servers in one process (tests) never clash on the global registry.

Domain gauges are computed on scrape (:class:`ScrapeCollector`) from the services'
sources of truth — their databases and Redis — rather than updated on every call: a
scrape every 15 s costs a few queries, the request path nothing, and values written by
other processes (the training workers) are included without a multiprocess registry.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis as SyncRedis
from redis import exceptions as redis_errors
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from services.shared.bus import dlq_stream

__all__ = [
    "BusStreamCollector",
    "GrpcServerMetrics",
    "MetricsEndpoint",
    "ScrapeCollector",
    "SqliteReader",
    "count_after",
    "scrape_redis",
    "start_metrics_endpoint",
]

_log = logging.getLogger(__name__)

# No ``<counter>_created`` / ``<histogram>_created`` gauge beside every counter and
# histogram: Prometheus does not use them (the Go client never had them), and they double
# the series a scrape carries. Process-wide; every service imports this module.
disable_created_metrics()

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# go-grpc-prometheus default buckets.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GrpcServerMetrics:
    """The five standard server-side gRPC metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.started = Counter(
            "grpc_server_started", "Total number of RPCs started on the server.",
            _LABELS, registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*_LABELS, "grpc_code"), registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            _LABELS, buckets=_BUCKETS, registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received", "Total number of RPC stream messages received on the server.",
            _LABELS, registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
            _LABELS, registry=registry,
        )


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server (a daemon thread)."""

    host: str
    port: int
    _server: WSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_endpoint(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve ``registry`` on ``http://host:port/metrics`` (port 0 = free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(host, server.server_port, server, thread)


# ----------------------------------------------------------------- domain metrics

#: Seconds a scrape may wait on Redis or a database before it leaves those series out.
SCRAPE_TIMEOUT_S = 1.0


def scrape_redis(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> SyncRedis:
    """A synchronous Redis client for collectors that read Redis on scrape.

    Collectors run in the ``/metrics`` HTTP server's thread, never on the service's event
    loop, so they use a client of their own: bounded connect and read timeouts and no
    retries, so a Redis that is away costs a scrape at most ``timeout_s`` per round
    trip and never holds the event loop.
    """
    return SyncRedis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                              retry=SyncRetry(NoBackoff(), 0), health_check_interval=0)


class ScrapeCollector(Collector):
    """A collector computed on scrape, from a source that may be away (Redis, a database).

    Subclasses list their families (``families()``, fresh and empty) and fill them
    (``fill(families)``). ``describe`` never touches the source (the registry calls it
    on register). A source that fails leaves the series it would have filled out of
    this scrape (absent, not zero: no false "queue is empty") and is logged at most
    once a minute.
    """

    name = "collector"

    def __init__(self) -> None:
        self._last_warning = 0.0

    def families(self) -> list[Metric]:
        raise NotImplementedError

    def fill(self, families: dict[str, Metric]) -> None:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        return iter(self.families())

    def collect(self) -> Iterator[Metric]:
        families = {f.name: f for f in self.families()}
        try:
            self.fill(families)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails for one source
            now = time.monotonic()
            if now - self._last_warning > 60:
                self._last_warning = now
                _log.warning("metrics collector %s failed: %r", self.name, exc)
            return iter(self.families())  # none of its series, rather than some
        return iter(families.values())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError))


class BusStreamCollector(ScrapeCollector):
    """Redis Streams metrics of the streams a service produces and consumes, read on scrape.

    Read from Redis (``XINFO STREAM``, ``XINFO GROUPS``; one pipelined round trip), not
    counted in the process, so entries that other processes add (the training service's
    spawned workers) count too, and the same stream is exported by one service only: the
    producer exports ``agentforge_bus_entries_added_total{stream}`` (publish rate), the
    consuming group's service exports ``agentforge_bus_group_*{stream,group}`` (consume
    rate, lag, pending) and the dead-letter stream's ``agentforge_bus_dead_letters_total``
    / ``agentforge_bus_dead_letter_entries``. Redis counts since it started, so a restart
    without persistence is a counter reset (``rate()`` handles it). A stream that does not
    exist yet has no series.

    Args:
        url: Redis URL.
        produced: streams this service appends to.
        consumed: ``(stream, group)`` pairs of the consumer groups this service runs.
    """

    name = "bus"

    def __init__(self, url: str, *, produced: Sequence[str] = (),
                 consumed: Sequence[tuple[str, str]] = (), timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        super().__init__()
        self.produced = list(dict.fromkeys(produced))
        self.consumed = list(dict.fromkeys(consumed))
        self._redis = scrape_redis(url, timeout_s)

    def close(self) -> None:
        self._redis.close()

    def families(self) -> list[Metric]:
        produced = [
            CounterMetricFamily("agentforge_bus_entries_added",
                                "Entries appended to the stream (XINFO STREAM entries-added): the publish rate.",
                                labels=("stream",)),
        ]
        consumed = [
            CounterMetricFamily("agentforge_bus_group_entries_read",
                                "Entries delivered to the consumer group (XINFO GROUPS entries-read): "
                                "the consume rate.", labels=("stream", "group")),
            GaugeMetricFamily("agentforge_bus_group_lag",
                              "Entries of the stream not yet delivered to the consumer group (XINFO GROUPS lag).",
                              labels=("stream", "group")),
            GaugeMetricFamily("agentforge_bus_group_pending",
                              "Entries delivered to the consumer group and not acknowledged yet.",
                              labels=("stream", "group")),
            CounterMetricFamily("agentforge_bus_dead_letters",
                                "Entries moved to the stream's dead-letter stream <stream>:dlq.",
                                labels=("stream",)),
            GaugeMetricFamily("agentforge_bus_dead_letter_entries",
                              "Entries in the stream's dead-letter stream <stream>:dlq now.",
                              labels=("stream",)),
        ]
        # Only the families this service has streams for (a scrape lists no empty family).
        return (produced if self.produced else []) + (consumed if self.consumed else [])

    def fill(self, families: dict[str, Metric]) -> None:
        groups_of: dict[str, list[str]] = {}
        for stream, group in self.consumed:
            groups_of.setdefault(stream, []).append(group)
        pipe = self._redis.pipeline(transaction=False)
        for stream in self.produced:
            pipe.xinfo_stream(stream)
        for stream in groups_of:
            pipe.xinfo_groups(stream)
            pipe.xinfo_stream(dlq_stream(stream))
        replies = iter(pipe.execute(raise_on_error=False))
        for stream in self.produced:
            info = next(replies)
            if isinstance(info, BaseException):
                if _unreachable(info):
                    raise info
                continue  # no such key: nothing published yet
            families["agentforge_bus_entries_added"].add_metric([stream], float(info["entries-added"]))
        fallback: list[tuple[str, str, str]] = []
        for stream, groups in groups_of.items():
            info, dlq = next(replies), next(replies)
            for reply in (info, dlq):
                if isinstance(reply, BaseException) and _unreachable(reply):
                    raise reply
            if not isinstance(info, BaseException):
                by_name = {_text(g["name"]): g for g in info}
                for group in groups:
                    g = by_name.get(group)
                    if g is None:
                        continue
                    families["agentforge_bus_group_entries_read"].add_metric(
                        [stream, group], float(g.get("entries-read") or 0))
                    families["agentforge_bus_group_pending"].add_metric([stream, group], float(g["pending"]))
                    if g.get("lag") is not None:
                        families["agentforge_bus_group_lag"].add_metric([stream, group], float(g["lag"]))
                    else:  # Redis cannot tell after deletions: count what is left after the cursor
                        fallback.append((stream, group, _text(g["last-delivered-id"])))
            if not isinstance(dlq, BaseException):
                families["agentforge_bus_dead_letters"].add_metric([stream], float(dlq["entries-added"]))
                families["agentforge_bus_dead_letter_entries"].add_metric([stream], float(dlq["length"]))
            else:
                families["agentforge_bus_dead_letters"].add_metric([stream], 0.0)
                families["agentforge_bus_dead_letter_entries"].add_metric([stream], 0.0)
        for stream, group, delivered in fallback:
            families["agentforge_bus_group_lag"].add_metric(
                [stream, group], float(count_after(self._redis, stream, delivered)))


#: Most entries :func:`count_after` counts (the lag of a group Redis cannot compute).
COUNT_CAP = 10_000


def count_after(client: SyncRedis, stream: str, entry_id: str, cap: int = COUNT_CAP) -> int:
    """Entries of ``stream`` after ``entry_id`` (exclusive), at most ``cap``."""
    total, start = 0, f"({entry_id}"
    while total < cap:
        batch = client.xrange(stream, min=start, count=min(1000, cap - total))
        if not batch:
            break
        total += len(batch)
        start = f"({_text(batch[-1][0])}"
    return total


class SqliteReader:
    """A read-only connection of a collector's own to a service's SQLite database (WAL).

    Never the service's connection (whose lock a long transaction may hold): WAL readers
    do not wait for writers, and ``timeout_s`` bounds a wait on a locked schema.
    ``snapshot(*queries)`` runs its queries in one read transaction, so they agree.
    """

    def __init__(self, path: Path | str, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._timeout_s = timeout_s
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def snapshot(self, *queries: tuple[str, tuple[object, ...]]) -> list[list[tuple[Any, ...]]]:
        with self._lock:
            if self._db is None:
                self._db = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA query_only=ON")
            self._db.execute("BEGIN")
            try:
                return [self._db.execute(sql, args).fetchall() for sql, args in queries]
            finally:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
