"""Domain objects → protobuf messages (no logic beyond field mapping)."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import duration_pb2, timestamp_pb2

from agentforge.monitoring.v1 import health_pb2, method_metrics_pb2
from services.monitoring.health import Component, Status
from services.monitoring.promtext import MethodStats

__all__ = ["component_to_proto", "duration", "method_stats_to_proto", "system_health", "timestamp"]

_RPC_TYPES = {
    "unary": method_metrics_pb2.RPC_TYPE_UNARY,
    "client_stream": method_metrics_pb2.RPC_TYPE_CLIENT_STREAMING,
    "server_stream": method_metrics_pb2.RPC_TYPE_SERVER_STREAMING,
    "bidi_stream": method_metrics_pb2.RPC_TYPE_BIDI_STREAMING,
}


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    if seconds is None:
        return None
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def component_to_proto(c: Component, now: float) -> health_pb2.ComponentHealth:
    return health_pb2.ComponentHealth(
        name=c.name,
        kind=int(c.kind),
        status=int(c.status),
        latency=duration(c.latency_s),
        error_rate=c.error_rate,
        uptime=duration(c.uptime(now)),
        last_change_time=timestamp(c.last_change),
        last_check_time=timestamp(c.last_check),
        message=c.message,
        endpoint=c.endpoint,
    )


def system_health(
    status: Status, components: Iterable[Component], now: float, changed: Iterable[str] = ()
) -> health_pb2.SystemHealth:
    return health_pb2.SystemHealth(
        status=int(status),
        components=[component_to_proto(c, now) for c in components],
        check_time=timestamp(now),
        changed_components=sorted(changed),
    )


def method_stats_to_proto(short_name: str, s: MethodStats) -> method_metrics_pb2.MethodMetrics:
    return method_metrics_pb2.MethodMetrics(
        name=f"services/{short_name}/methodMetrics/{s.key.method}",
        service=s.key.service,
        method=s.key.method,
        rpc_type=_RPC_TYPES.get(s.key.grpc_type, method_metrics_pb2.RPC_TYPE_UNSPECIFIED),
        requests_total=s.requests_total,
        errors_total=s.errors_total,
        errors_by_code=dict(s.errors_by_code),
        latency_p50=duration(s.p50_s),
        latency_p90=duration(s.p90_s),
        latency_p99=duration(s.p99_s),
        qps=s.qps,
        error_rate=s.error_rate,
        in_flight=s.in_flight,
        window=duration(s.window_s),
    )
