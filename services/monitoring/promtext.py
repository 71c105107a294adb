"""Per-method request metrics from the services' Prometheus text (pure logic).

The services export the go-grpc-prometheus metrics (``grpc_server_started_total``,
``grpc_server_handled_total{grpc_code}``, ``grpc_server_handling_seconds`` histogram).
:func:`parse_scrape` reads one scrape; :func:`method_stats` turns a scrape and an older
baseline scrape into per-method numbers:

* ``requests_total``/``errors_total``/``errors_by_code``: counters since the service
  started (the current scrape);
* ``p50/p90/p99``, ``qps``, ``error_rate``: over the window between the baseline and
  the current scrape (bucket and counter deltas). Without a baseline (or after a counter
  reset, i.e. the service restarted) they cover the whole life of the process and
  ``window_s`` is None;
* percentiles interpolate linearly inside the histogram bucket, like PromQL's
  ``histogram_quantile``; ``in_flight`` = started − handled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "EXCLUDED_SERVICES",
    "SERVER_FAULT_CODES",
    "MethodCounters",
    "MethodKey",
    "MethodStats",
    "Scrape",
    "error_rate",
    "histogram_quantile",
    "method_stats",
    "parse_samples",
    "parse_scrape",
    "scrape_from_samples",
    "pick_baseline",
]

#: gRPC services left out of per-method numbers and error rates: the monitoring
#: service's own probes (health Check/Watch, reflection) would drown real traffic.
EXCLUDED_SERVICES: frozenset[str] = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)


#: gRPC codes that mean the *server* failed the call; the others (INVALID_ARGUMENT,
#: NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED for a slow or
#: rate-limited client, FAILED_PRECONDITION, …) are the client's answer, correctly
#: given. Health judges a service by these only, as an availability SLI does (Google SRE
#: workbook, "Implementing SLOs": a request that failed because of the client is not
#: unavailability); ``errors_by_code`` and the per-method ``error_rate`` still count
#: every non-OK answer.
SERVER_FAULT_CODES: frozenset[str] = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"}
)


@dataclass(frozen=True, slots=True, order=True)
class MethodKey:
    service: str  # full gRPC service name
    method: str
    grpc_type: str  # unary | client_stream | server_stream | bidi_stream


@dataclass(slots=True)
class MethodCounters:
    started: float = 0.0
    handled: dict[str, float] = field(default_factory=dict)  # by grpc_code
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    @property
    def handled_total(self) -> float:
        return sum(self.handled.values())

    @property
    def errors(self) -> float:
        return sum(v for code, v in self.handled.items() if code != "OK")

    @property
    def server_errors(self) -> float:
        return sum(v for code, v in self.handled.items() if code in SERVER_FAULT_CODES)


@dataclass(slots=True)
class Scrape:
    """One scrape of one service (``time`` in Unix seconds)."""

    time: float
    methods: dict[MethodKey, MethodCounters] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MethodStats:
    key: MethodKey
    requests_total: int
    errors_total: int
    errors_by_code: Mapping[str, int]
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    qps: float
    error_rate: float
    in_flight: int
    window_s: float | None


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text exposition: (name, labels, value).

    Raises ValueError for text that is not the exposition format."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def scrape_from_samples(samples: Iterable[tuple[str, Mapping[str, str], float]], time: float) -> Scrape:
    """The grpc_server_* counters of one scrape's samples, per method."""
    scrape = Scrape(time)
    for name, labels, value in samples:
        if not name.startswith("grpc_server_"):
            continue
        try:
            key = MethodKey(labels["grpc_service"], labels["grpc_method"], labels["grpc_type"])
        except KeyError:
            continue
        counters = scrape.methods.setdefault(key, MethodCounters())
        if name == "grpc_server_started_total":
            counters.started += value
        elif name == "grpc_server_handled_total":
            code = labels.get("grpc_code", "UNKNOWN")
            counters.handled[code] = counters.handled.get(code, 0.0) + value
        elif name == "grpc_server_handling_seconds_bucket":
            le = float(labels["le"])
            counters.buckets[le] = counters.buckets.get(le, 0.0) + value
    return scrape


def parse_scrape(text: str, time: float) -> Scrape:
    """Read the grpc_server_* families out of a Prometheus text exposition."""
    return scrape_from_samples(parse_samples(text), time)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL ``histogram_quantile`` over cumulative ``{le: count}``; None when empty."""
    if not buckets:
        return None
    items = sorted(buckets.items())
    total = items[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, lower_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound, as Prometheus does
            in_bucket = count - lower_count
            if in_bucket <= 0:
                return le
            return lower + (le - lower) * (rank - lower_count) / in_bucket
        lower, lower_count = le, count
    return lower


def _delta(current: MethodCounters, base: MethodCounters | None) -> MethodCounters | None:
    """current − base, or None when a counter went down (the process restarted)."""
    if base is None:
        return current
    handled = {code: v - base.handled.get(code, 0.0) for code, v in current.handled.items()}
    buckets = {le: v - base.buckets.get(le, 0.0) for le, v in current.buckets.items()}
    if any(v < 0 for v in (*handled.values(), *buckets.values())) or current.started < base.started:
        return None
    return MethodCounters(current.started - base.started, handled, buckets)


def method_stats(current: Scrape, baseline: Scrape | None, *, excluded: Iterable[str] = EXCLUDED_SERVICES) -> list[MethodStats]:
    """Per-method numbers, ordered by service then method (see the module docstring)."""
    skip = set(excluded)
    result: list[MethodStats] = []
    for key in sorted(current.methods):
        if key.service in skip:
            continue
        now = current.methods[key]
        base = baseline.methods.get(key) if baseline is not None else None
        delta = _delta(now, base) if baseline is not None else None
        window_s: float | None = None
        if delta is not None and baseline is not None and current.time > baseline.time:
            window_s = current.time - baseline.time
        else:
            delta = now
        calls = delta.handled_total
        errors_by_code = {code: int(v) for code, v in sorted(now.handled.items()) if code != "OK" and v > 0}
        result.append(MethodStats(
            key=key,
            requests_total=int(now.handled_total),
            errors_total=int(now.errors),
            errors_by_code=errors_by_code,
            p50_s=histogram_quantile(0.5, delta.buckets),
            p90_s=histogram_quantile(0.9, delta.buckets),
            p99_s=histogram_quantile(0.99, delta.buckets),
            qps=calls / window_s if window_s else 0.0,
            error_rate=delta.errors / calls if calls > 0 else 0.0,
            in_flight=max(0, int(now.started - now.handled_total)),
            window_s=window_s,
        ))
    return result


def error_rate(current: Scrape, baseline: Scrape | None, *, excluded: Iterable[str] = EXCLUDED_SERVICES) -> tuple[float, int]:
    """(server-fault fraction, calls) of all methods between ``baseline`` and ``current``.

    Only :data:`SERVER_FAULT_CODES` count as failures: a burst of rejected bad input or
    bad tokens does not make a healthy service DEGRADED.
    """
    skip = set(excluded)
    calls = errors = 0.0
    for key, now in current.methods.items():
        if key.service in skip:
            continue
        base = baseline.methods.get(key) if baseline is not None else None
        delta = _delta(now, base)
        if delta is None:  # restarted: count since the restart
            delta = now
        calls += delta.handled_total
        errors += delta.server_errors
    return (errors / calls if calls > 0 else 0.0), int(calls)


def pick_baseline(history: Sequence[Scrape], now: float, window_s: float) -> Scrape | None:
    """The oldest scrape no older than ``window_s`` (None when there is none)."""
    for scrape in history:
        if now - scrape.time <= window_s:
            return scrape
    return None

