"""Prometheus collectors with the go-grpc-prometheus names, and the /metrics endpoint.

Collectors live on a per-server :class:`prometheus_client.CollectorRegistry`, so
several servers in one process (tests) never clash on the global registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

__all__ = ["GrpcServerMetrics", "MetricsEndpoint", "start_metrics_endpoint"]

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
