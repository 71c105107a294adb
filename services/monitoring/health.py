"""Health domain: component state, the DEGRADED rules and the overall status.

Pure logic (no gRPC, no I/O, an injectable clock), so every rule is unit-testable.
The probe adapters (:mod:`services.monitoring.probes`) feed observations in; the
servicer turns :class:`Component` snapshots into protobuf.

Rules
=====

Component status (:func:`judge`): the probe's report decides — a service's
grpc.health.v1 status, PING for Valkey, ``/ready`` for Envoy; a failed/timed-out probe
or a broken Watch stream is NOT_SERVING. A component reported SERVING becomes
DEGRADED when

* its last probe took longer than ``degraded_latency_s``, or
* its error rate (RPCs the server failed — ``promtext.SERVER_FAULT_CODES``: UNKNOWN,
  INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS, UNIMPLEMENTED — over all RPCs in
  the window, from the service's own Prometheus counters, health and reflection calls
  excluded; a client's bad input or bad token is not the service's failure) is above
  ``degraded_error_rate`` with at least ``min_calls`` calls in the window.

Error rates computed from failed probes (the fallback when a service's metrics
endpoint is unknown) are reported but never judged: a probe failure already made the
component NOT_SERVING, and judging it would keep a recovered service DEGRADED for a
whole window.

Overall status (:func:`overall_status`), first match wins:

1. any *service* NOT_SERVING                        → NOT_SERVING
2. any component DEGRADED, or any dependency/edge
   (Valkey, Envoy) NOT_SERVING while services serve → DEGRADED
3. any component UNKNOWN (not probed yet, or not configured) → UNKNOWN
4. otherwise (and at least one component)           → SERVING

Uptime: since the component last became serving (SERVING or DEGRADED) as observed by
the probes; zero while NOT_SERVING or UNKNOWN (the services do not export their
process start time).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "Change",
    "Component",
    "HealthBook",
    "Kind",
    "ProbeWindow",
    "Status",
    "Thresholds",
    "UnknownComponent",
    "judge",
    "overall_status",
]

Clock = Callable[[], float]


class Status(IntEnum):
    """Same numbers as ``agentforge.monitoring.v1.HealthStatus``."""

    SERVING = 1
    NOT_SERVING = 2
    DEGRADED = 3
    UNKNOWN = 4

    @property
    def serving(self) -> bool:
        return self in (Status.SERVING, Status.DEGRADED)


class Kind(IntEnum):
    """Same numbers as ``agentforge.monitoring.v1.ComponentKind``."""

    SERVICE = 1
    DEPENDENCY = 2
    EDGE = 3


class UnknownComponent(KeyError):
    """No component of that name."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a serving component counts as DEGRADED."""

    degraded_latency_s: float = 0.5
    degraded_error_rate: float = 0.05
    min_calls: int = 20


@dataclass(slots=True)
class Component:
    """The latest known health of one component (times are Unix seconds)."""

    name: str  # components/{component}
    kind: Kind
    endpoint: str
    status: Status = Status.UNKNOWN
    #: What the probe itself said, before the DEGRADED rules.
    reported: Status = Status.UNKNOWN
    latency_s: float | None = None
    error_rate: float = 0.0
    #: Calls the error rate is based on; judged only when ``error_rate_judged``.
    error_calls: int = 0
    error_rate_judged: bool = False
    message: str = ""
    probe_message: str = ""
    serving_since: float | None = None
    last_change: float | None = None
    last_check: float | None = None

    def uptime(self, now: float) -> float:
        if self.serving_since is None or not self.status.serving:
            return 0.0
        return max(0.0, now - self.serving_since)

    def copy(self) -> Component:
        return dataclasses.replace(self)


@dataclass(frozen=True, slots=True)
class Change:
    """A component's status changed."""

    component: Component  # a copy, after the change
    previous: Status


def judge(
    reported: Status,
    *,
    latency_s: float | None,
    error_rate: float,
    calls: int,
    error_rate_judged: bool,
    thresholds: Thresholds,
    probe_message: str = "",
) -> tuple[Status, str]:
    """The component status and its message, from the probe's report and the numbers."""
    if reported is not Status.SERVING:
        return reported, probe_message
    reasons = []
    if latency_s is not None and latency_s > thresholds.degraded_latency_s:
        reasons.append(f"probe latency {latency_s * 1000:.0f}ms over {thresholds.degraded_latency_s * 1000:.0f}ms")
    if error_rate_judged and calls >= thresholds.min_calls and error_rate > thresholds.degraded_error_rate:
        reasons.append(f"error rate {error_rate:.1%} over {thresholds.degraded_error_rate:.1%} ({calls} calls)")
    if reasons:
        return Status.DEGRADED, "; ".join(reasons)
    return Status.SERVING, probe_message


def overall_status(components: Iterable[Component]) -> Status:
    """The system status by the rule in the module docstring."""
    items = list(components)
    if not items:
        return Status.UNKNOWN
    if any(c.kind is Kind.SERVICE and c.status is Status.NOT_SERVING for c in items):
        return Status.NOT_SERVING
    if any(c.status is Status.DEGRADED or c.status is Status.NOT_SERVING for c in items):
        return Status.DEGRADED
    if any(c.status is Status.UNKNOWN for c in items):
        return Status.UNKNOWN
    return Status.SERVING


class ProbeWindow:
    """Probe outcomes over a sliding window: the fallback error rate."""

    def __init__(self, window_s: float, clock: Clock = time.time) -> None:
        self._window = window_s
        self._clock = clock
        self._outcomes: deque[tuple[float, bool]] = deque()

    def add(self, ok: bool) -> None:
        self._outcomes.append((self._clock(), ok))
        self._trim()

    def _trim(self) -> None:
        cutoff = self._clock() - self._window
        while self._outcomes and self._outcomes[0][0] < cutoff:
            self._outcomes.popleft()

    def rate(self) -> tuple[float, int]:
        """(failed fraction, probes) over the window."""
        self._trim()
        total = len(self._outcomes)
        if total == 0:
            return 0.0, 0
        return sum(1 for _, ok in self._outcomes if not ok) / total, total


class HealthBook:
    """All components and their state; every update says whether the status changed."""

    def __init__(self, thresholds: Thresholds | None = None, clock: Clock = time.time) -> None:
        self.thresholds = thresholds or Thresholds()
        self._clock = clock
        self._components: dict[str, Component] = {}

    def add(self, name: str, kind: Kind, endpoint: str, *, message: str = "") -> None:
        """Register a component, UNKNOWN until its first probe."""
        self._components[name] = Component(
            name, kind, endpoint, message=message, probe_message=message, last_change=self._clock()
        )

    def names(self) -> list[str]:
        return sorted(self._components)

    def get(self, name: str) -> Component:
        try:
            return self._components[name].copy()
        except KeyError:
            raise UnknownComponent(name) from None

    def snapshot(self, kinds: Iterable[Kind] = ()) -> list[Component]:
        """Copies of the components (of ``kinds``; all when empty), ordered by name."""
        wanted = set(kinds)
        return [self._components[n].copy() for n in sorted(self._components)
                if not wanted or self._components[n].kind in wanted]

    def report(
        self,
        name: str,
        status: Status,
        *,
        message: str = "",
        latency_s: float | None = None,
        checked: bool = True,
    ) -> Change | None:
        """Record a probe result (``checked``: a probe finished now, update last_check)."""
        component = self._get(name)
        component.reported = status
        component.probe_message = message
        if latency_s is not None:
            component.latency_s = latency_s
        if checked:
            component.last_check = self._clock()
        return self._rejudge(component)

    def set_error_rate(self, name: str, rate: float, calls: int, *, judged: bool) -> Change | None:
        """Record the error rate over the window and how many calls it covers."""
        component = self._get(name)
        component.error_rate = min(1.0, max(0.0, rate))
        component.error_calls = calls
        component.error_rate_judged = judged
        return self._rejudge(component)

    def _get(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            raise UnknownComponent(name) from None

    def _rejudge(self, c: Component) -> Change | None:
        status, message = judge(
            c.reported,
            latency_s=c.latency_s if c.reported is Status.SERVING else None,
            error_rate=c.error_rate,
            calls=c.error_calls,
            error_rate_judged=c.error_rate_judged,
            thresholds=self.thresholds,
            probe_message=c.probe_message,
        )
        c.message = message
        if status is c.status:
            return None
        previous, now = c.status, self._clock()
        c.status = status
        c.last_change = now
        if status.serving and not previous.serving:
            c.serving_since = now
        elif not status.serving:
            c.serving_since = None
        return Change(c.copy(), previous)
