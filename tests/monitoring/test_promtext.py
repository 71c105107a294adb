"""Per-method metrics from real Prometheus text of the shared GrpcServerMetrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.monitoring.promtext import error_rate, histogram_quantile, method_stats, parse_scrape
from services.shared.metrics import GrpcServerMetrics

SVC = "agentforge.test.v1.Test"


def record(m: GrpcServerMetrics, method: str, code: str, seconds: float, n: int = 1) -> None:
    for _ in range(n):
        m.started.labels("unary", SVC, method).inc()
        m.handled.labels("unary", SVC, method, code).inc()
        m.handling_seconds.labels("unary", SVC, method).observe(seconds)


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.99, {0.1: 1.0, float("inf"): 2.0}) == 0.1  # +Inf bucket: highest finite bound
    assert histogram_quantile(0.5, {}) is None


def test_counts_errors_and_percentiles_from_a_real_exposition() -> None:
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    record(metrics, "Get", "OK", 0.003, n=90)
    record(metrics, "Get", "NOT_FOUND", 0.003, n=8)
    record(metrics, "Get", "UNAVAILABLE", 0.3, n=2)
    metrics.started.labels("unary", SVC, "Slow").inc()  # in flight
    metrics.handling_seconds.labels("unary", "grpc.health.v1.Health", "Check").observe(0.001)
    metrics.handled.labels("unary", "grpc.health.v1.Health", "Check", "OK").inc()

    scrape = parse_scrape(generate_latest(registry).decode(), time=100.0)
    stats = {s.key.method: s for s in method_stats(scrape, None)}
    assert set(stats) == {"Get", "Slow"}  # health calls excluded
    get = stats["Get"]
    assert (get.requests_total, get.errors_total) == (100, 10)
    assert dict(get.errors_by_code) == {"NOT_FOUND": 8, "UNAVAILABLE": 2}
    assert get.error_rate == pytest.approx(0.1)
    assert get.p50_s is not None and get.p50_s <= 0.005
    assert get.p99_s is not None and 0.25 <= get.p99_s <= 0.5
    assert get.window_s is None and get.qps == 0.0
    assert stats["Slow"].in_flight == 1


def test_window_uses_deltas_against_the_baseline() -> None:
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    record(metrics, "Get", "INTERNAL", 0.3, n=10)
    baseline = parse_scrape(generate_latest(registry).decode(), time=100.0)
    record(metrics, "Get", "OK", 0.003, n=20)
    current = parse_scrape(generate_latest(registry).decode(), time=110.0)

    (get,) = method_stats(current, baseline)
    assert get.requests_total == 30 and get.errors_total == 10  # since start
    assert get.window_s == 10.0 and get.qps == pytest.approx(2.0)  # 20 calls in 10 s
    assert get.error_rate == 0.0 and get.p99_s is not None and get.p99_s <= 0.005
    assert error_rate(current, baseline) == (0.0, 20)
    assert error_rate(current, None) == (pytest.approx(10 / 30), 30)


def test_health_error_rate_counts_server_faults_not_client_mistakes() -> None:
    """Rejected bad input, bad tokens and unknown names do not make a service DEGRADED."""
    registry = CollectorRegistry()
    metrics = GrpcServerMetrics(registry)
    for code in ("INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND",
                 "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS", "OUT_OF_RANGE"):
        record(metrics, "Get", code, 0.001, n=10)
    record(metrics, "Get", "OK", 0.001, n=10)
    assert error_rate(parse_scrape(generate_latest(registry).decode(), time=1.0), None) == (0.0, 90)
    for code in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"):
        record(metrics, "Get", code, 0.001, n=5)
    assert error_rate(parse_scrape(generate_latest(registry).decode(), time=2.0), None) == (
        pytest.approx(30 / 120), 120)
