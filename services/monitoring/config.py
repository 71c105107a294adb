"""Configuration of the monitoring service, read from the environment.

Every knob is a field of :class:`MonitoringConfig`, documented once below. The gRPC
server itself (port, metrics port, keepalive…) is configured by the shared
:class:`services.shared.config.ServerConfig` (``AF_MONITORING_PORT`` etc.).

Targets:

* ``AF_<SVC>_ADDR`` (``host:port``) for each of training, model, realtime, monitoring,
  forge: the services to watch. A service without an address is not a component. When
  ``AF_MONITORING_ADDR`` is unset, the monitoring service watches itself on the port it
  bound (``create_server`` fills that in).
* ``AF_<SVC>_METRICS_ADDR`` (``host:port``): the service's Prometheus endpoint, used for
  its error rate and for ``ListMethodMetrics``. Without it, but with a fixed
  ``AF_<SVC>_METRICS_PORT`` > 0, the host of ``AF_<SVC>_ADDR`` and that port are used.
* ``REDIS_URL``: Valkey, probed with PING (UNKNOWN when unset).
* ``AF_ENVOY_ADMIN_ADDR`` (``host:port``): Envoy's admin, probed on ``/ready`` and
  ``/clusters?format=json`` (UNKNOWN when unset: never assumed healthy).

Tuning (``AF_MONITORING_<KNOB>``, see the fields), e.g. ``AF_MONITORING_TRAINING_STALL_AFTER_S``
for the built-in training alert rules' thresholds (docs/api.md, "Alert rules").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services.shared.config import env_overrides

__all__ = ["SERVICE_NAMES", "MonitoringConfig", "Target"]

#: The mesh's services, in the order they are listed.
SERVICE_NAMES: tuple[str, ...] = ("training", "model", "realtime", "monitoring", "forge")


@dataclass(frozen=True, slots=True)
class Target:
    """One service to watch."""

    #: Short name, e.g. ``training`` (component ``components/training``).
    name: str
    #: gRPC ``host:port``.
    address: str
    #: Prometheus ``host:port`` or None when unknown.
    metrics_address: str | None = None
    #: grpc.health.v1 service name to Watch/Check; ``""`` = the whole server.
    health_service: str = ""


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """What the monitoring service watches and how often."""

    #: Services to watch (from ``AF_<SVC>_ADDR``).
    targets: tuple[Target, ...] = ()
    #: Valkey URL (``REDIS_URL``); None = component UNKNOWN ("not configured").
    redis_url: str | None = None
    #: Envoy admin ``host:port`` (``AF_ENVOY_ADMIN_ADDR``); None = UNKNOWN.
    envoy_admin_addr: str | None = None
    #: Directory for durable state (``$AF_DATA_DIR/monitoring``); None = in-memory SQLite.
    data_dir: Path | None = None
    #: Seconds between periodic probes (health Check latency, PING, Envoy, metrics scrape).
    #: Status changes of services arrive through Watch streams without waiting for it.
    probe_interval_s: float = 2.0
    #: Timeout of one probe (Check, PING, HTTP); a probe over it counts as failed.
    probe_timeout_s: float = 1.0
    #: First delay before re-opening a broken Watch stream; doubles up to the max.
    reconnect_initial_s: float = 0.1
    #: Longest delay between Watch reconnect attempts (also the channel's reconnect backoff).
    reconnect_max_s: float = 2.0
    #: Window of the error rate (metrics deltas, or failed probes when no metrics).
    error_window_s: float = 60.0
    #: A SERVING component whose error rate is above this is DEGRADED.
    degraded_error_rate: float = 0.05
    #: Error rates are only judged with at least this many calls in the window.
    min_calls_for_error_rate: int = 20
    #: A SERVING component whose probe took longer than this (s) is DEGRADED.
    degraded_latency_s: float = 0.5
    #: Bus stream for HealthChanged / alert events.
    events_stream: str = "events.health"
    #: Bus stream for AlertRaised / AlertResolved events.
    alerts_stream: str = "events.alerts"
    #: Seconds between alert rule evaluations (also evaluated on every status change).
    alert_eval_interval_s: float = 1.0
    #: Seconds a status must last before the default "service not serving" rule fires.
    default_rule_for_s: float = 5.0
    #: Alert events kept in memory for ``WatchAlerts`` replay.
    alert_history: int = 10_000
    #: How long publishing an event to the bus may retry while Valkey is down (s).
    publish_timeout_s: float = 1.0
    #: Bus stream of the training service's job events (the training alerts' source).
    training_events_stream: str = "events.training"
    #: Built-in rule ``alertRules/training-job-stalled``: seconds a RUNNING job may go
    #: without a new step (or five of its recent progress intervals, if longer).
    training_stall_after_s: float = 300.0
    #: Built-in rule ``alertRules/training-job-diverged``: the highest sane training loss
    #: (a NaN/infinite loss always counts). Cross-entropy at chance is ln(vocabulary).
    training_max_loss: float = 100.0
    #: Built-in rule ``alertRules/training-grokking-onset``: validation accuracy that
    #: marks the onset ...
    training_grok_validation_accuracy: float = 0.5
    #: ... after this many evaluations with train accuracy at least
    training_grok_plateau_evaluations: int = 5
    #: ... this (the training set memorized).
    training_grok_memorized_accuracy: float = 0.95
    #: Built-in rule ``alertRules/training-train-val-gap``: train minus validation
    #: accuracy at least this at every evaluation ...
    training_gap: float = 0.5
    #: ... for this many seconds.
    training_gap_for_s: float = 600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MonitoringConfig:
        """Build the config from the process environment (see the module docstring)."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        targets = []
        for svc in SERVICE_NAMES:
            addr = get(f"AF_{svc.upper()}_ADDR")
            if addr is None:
                continue
            targets.append(Target(svc, addr, _metrics_address(env, svc, addr)))
        base = cls()
        knobs = env_overrides(cls, "monitoring", env)
        data_root = get("AF_DATA_DIR")
        config = replace(
            base,
            targets=tuple(targets),
            redis_url=get("REDIS_URL"),
            envoy_admin_addr=get("AF_ENVOY_ADMIN_ADDR"),
            data_dir=Path(data_root) / "monitoring" if data_root else None,
            **knobs,
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError on values that cannot work."""
        for name in ("probe_interval_s", "probe_timeout_s", "reconnect_initial_s", "reconnect_max_s",
                     "error_window_s", "alert_eval_interval_s", "publish_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        if not 0 <= self.degraded_error_rate <= 1:
            raise ValueError("degraded_error_rate must be in [0, 1]")
        if not 1 <= self.training_stall_after_s <= 86400:
            raise ValueError("training_stall_after_s must be in [1, 86400]")
        if not (self.training_max_loss > 0 and self.training_max_loss != float("inf")):
            raise ValueError("training_max_loss must be a finite number > 0")
        for name in ("training_grok_validation_accuracy", "training_grok_memorized_accuracy", "training_gap"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if not 1 <= self.training_grok_plateau_evaluations <= 100_000:
            raise ValueError("training_grok_plateau_evaluations must be in [1, 100000]")
        if not 0 <= self.training_gap_for_s <= 86400:
            raise ValueError("training_gap_for_s must be in [0, 86400]")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate targets: {names}")

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def with_target(self, target: Target) -> MonitoringConfig:
        """A copy with ``target`` added (or replacing the one of the same name)."""
        rest = tuple(t for t in self.targets if t.name != target.name)
        order = {n: i for i, n in enumerate(SERVICE_NAMES)}
        merged = sorted((*rest, target), key=lambda t: (order.get(t.name, len(order)), t.name))
        return replace(self, targets=tuple(merged))


def _metrics_address(env: Mapping[str, str], svc: str, grpc_addr: str) -> str | None:
    explicit = env.get(f"AF_{svc.upper()}_METRICS_ADDR", "").strip()
    if explicit:
        return explicit
    port = env.get(f"AF_{svc.upper()}_METRICS_PORT", "").strip()
    if port.isdigit() and int(port) > 0:
        host = grpc_addr.rpartition(":")[0] or "127.0.0.1"
        return f"{host}:{port}"
    return None
