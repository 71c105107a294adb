"""Server configuration read from the environment.

Every knob is a field of :class:`ServerConfig`, documented once below. A field
``grace_seconds`` of the ``training`` service is read from ``AF_TRAINING_GRACE_SECONDS``,
falling back to the generic ``AF_GRACE_SECONDS``, then to the default. Booleans accept
``1/0, true/false, yes/no, on/off``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

__all__ = ["ServerConfig", "env_names", "env_overrides"]

_MIB = 1024 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How one gRPC service process listens, limits and logs."""

    #: Interface the gRPC server binds (``[::]`` = all, IPv4 and IPv6).
    host: str = "[::]"
    #: gRPC port; 0 picks a free port (the bound port is reported in the ready line).
    port: int = 0
    #: Interface of the Prometheus ``/metrics`` HTTP endpoint.
    metrics_host: str = "127.0.0.1"
    #: Metrics port; 0 picks a free port, -1 disables the endpoint.
    metrics_port: int = 0
    #: Seconds open RPCs get to finish after SIGTERM/SIGINT before they are cancelled.
    grace_seconds: float = 5.0
    #: Server sends a keepalive ping after this many ms without activity.
    keepalive_time_ms: int = 30_000
    #: Connection is closed if a keepalive ping is not acked within this many ms.
    keepalive_timeout_ms: int = 10_000
    #: Allow keepalive pings (both ways) on connections with no open RPC.
    keepalive_permit_without_calls: bool = True
    #: Shortest interval between client pings the server accepts (ms); faster = GOAWAY.
    min_ping_interval_ms: int = 10_000
    #: Largest message the server sends, in bytes.
    max_send_message_bytes: int = 16 * _MIB
    #: Largest message the server accepts, in bytes (bigger → RESOURCE_EXHAUSTED).
    max_receive_message_bytes: int = 16 * _MIB
    #: HTTP/2 streams (concurrent RPCs) allowed per client connection. Above Envoy's
    #: per-upstream-connection limit (1,000) on purpose: streams a client just cancelled
    #: still count here until their handlers have ended, and a burst of resubscribes
    #: on Envoy's pooled connection was refused (RST_STREAM → CANCELLED at the client)
    #: while Envoy counted them as gone.
    max_concurrent_streams: int = 4096
    #: New calls grpc-core may hold before the server's event loop takes them (a burst
    #: of thousands of streams opened at once). Above it grpc-core refuses a random
    #: share of new calls, all of them at ``max_pending_requests_hard_limit``, and the
    #: client sees CANCELLED (which it does not retry) before any of our code runs.
    #: grpc's defaults, 1,000 and 3,000, refused 8-13 % of 2,200 streams opened at once
    #: through the edge (docs/benchmarks.md).
    max_pending_requests: int = 10_000
    max_pending_requests_hard_limit: int = 20_000
    #: Seconds a new call may wait in grpc-core for the event loop to take it before it
    #: is dropped as CANCELLED (``grpc.server_max_unrequested_time_in_server``; grpc's
    #: default 30 s). The loop takes calls one at a time, so thousands of streams opened
    #: at once on a busy 2-core box waited longer than 30 s; a stream opened late beats
    #: a CANCELLED the client does not retry. Calls with a deadline end at it anyway.
    max_unrequested_time_s: int = 120
    #: Python logging level name (DEBUG, INFO, WARNING, ERROR).
    log_level: str = "INFO"
    #: ``json`` (one object per line) or ``text`` (human readable).
    log_format: str = "json"
    #: Seconds a server stream with a ``stream_end`` field may go without sending a
    #: message before the server ends it with UNAVAILABLE (the client resumes with its
    #: last cursor); below the edge's streaming idle timeout (900 s), which would
    #: otherwise reset the quiet stream without a status. 0 = never.
    stream_max_quiet_s: float = 600.0
    #: Seconds a watch stream (``WatchTrainingJob``, ``WatchPhaseRun``, ``WatchAlerts``)
    #: may go without a message before the server sends a ``heartbeat``; grpc.health.v1
    #: ``Watch`` re-sends the current status as often. Keeps quiet streams open through
    #: proxies' idle timeouts (Envoy's streaming idle timeout: 900 s; many load balancers:
    #: 60 s). 0 = never.
    stream_heartbeat_s: float = 15.0
    #: Durable state root (``AF_DATA_DIR``): the runtime keeps its idempotency keys in
    #: ``<data_dir>/idempotency/<service>.db``; empty = in memory only.
    data_dir: str = ""

    @classmethod
    def from_env(
        cls, service: str, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Build the config of ``service`` from ``AF_<SERVICE>_<FIELD>`` / ``AF_<FIELD>``."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            for name in env_names(service, f.name):
                raw = env.get(name)
                if raw is not None and raw.strip() != "":
                    values[f.name] = _parse(name, raw.strip(), hints[f.name])
                    break
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port out of range: {self.metrics_port}")
        if self.grace_seconds < 0:
            raise ValueError("grace_seconds must be >= 0")
        if self.stream_max_quiet_s < 0:
            raise ValueError("stream_max_quiet_s must be >= 0 (0 = never)")
        if self.stream_heartbeat_s < 0:
            raise ValueError("stream_heartbeat_s must be >= 0 (0 = never)")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, not {self.log_format!r}")
        for name in ("max_send_message_bytes", "max_receive_message_bytes",
                     "max_concurrent_streams", "keepalive_time_ms", "keepalive_timeout_ms",
                     "max_pending_requests", "max_unrequested_time_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_pending_requests_hard_limit < self.max_pending_requests:
            raise ValueError("max_pending_requests_hard_limit must be >= max_pending_requests")

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port >= 0

    def grpc_options(self) -> list[tuple[str, int]]:
        """Core channel arguments for ``grpc.aio.server(options=...)``."""
        return [
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.server.max_pending_requests", self.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", self.max_pending_requests_hard_limit),
            ("grpc.server_max_unrequested_time_in_server", self.max_unrequested_time_s),
        ]


def env_names(service: str, field_name: str) -> tuple[str, str]:
    """Environment variables consulted for a field, most specific first."""
    svc = service.upper().replace("-", "_")
    knob = field_name.upper()
    return (f"AF_{svc}_{knob}", f"AF_{knob}")


def env_overrides(
    cls: type, service: str, environ: Mapping[str, str] | None = None, *, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Values for the scalar fields (str, int, float, bool, Path) of dataclass ``cls`` that
    ``AF_<SERVICE>_<FIELD>`` sets, parsed and named in errors; for a service's
    ``from_env``, which adds what comes from shared variables (``AF_DATA_DIR``, ``REDIS_URL``).
    """
    env = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    prefix = f"AF_{service.upper().replace('-', '_')}_"
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if f.name in skip or typ not in (str, int, float, bool, Path):
            continue
        name = prefix + f.name.upper()
        raw = env.get(name, "").strip()
        if raw:
            values[f.name] = Path(raw) if typ is Path else _parse(name, raw, typ)
    return values


def _parse(name: str, raw: str, typ: Any) -> Any:
    try:
        if typ is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("not a boolean")
        if typ is int:
            return int(raw, 0)
        if typ is float:
            return float(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r}: {exc}") from None
