"""When to restart a crashed process, and when to give up: systemd's restart rules.

systemd restarts a unit with ``Restart=`` after ``RestartSec``, growing the delay up to
``RestartMaxDelaySec`` (systemd >= 254), and stops restarting once the unit was started
more than ``StartLimitBurst`` times within ``StartLimitIntervalSec`` (systemd.service(5),
systemd.unit(5)). :class:`RestartPolicy` holds the same four knobs and
:class:`RestartBudget` applies them to one supervised process. The launcher uses them for
the services, Envoy and the embedded Valkey; the training service for its worker pool.

==============================  ====================  ===========================  =======
env (launcher; a pool adds its   field                 systemd                      default
own prefix, see ``from_env``)
==============================  ====================  ===========================  =======
``AF_RESTART_BURST``            ``burst``             ``StartLimitBurst``          5
``AF_RESTART_INTERVAL_S``       ``interval_s``        ``StartLimitIntervalSec``    60
``AF_RESTART_DELAY_S``          ``delay_s``           ``RestartSec``               0.5
``AF_RESTART_MAX_DELAY_S``      ``max_delay_s``       ``RestartMaxDelaySec``       10
==============================  ====================  ===========================  =======
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agentforge.client.retry import backoff_delay
from services.shared.config import env_overrides

__all__ = ["RestartBudget", "RestartPolicy"]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Restart after a growing delay; give up after ``burst`` restarts within ``interval_s``.

    The n-th crash inside the window waits ``min(delay_s * 2**(n-1), max_delay_s)``
    seconds before the restart; the crash that would be restart number ``burst + 1``
    within ``interval_s`` seconds is not restarted (the supervisor gives up and says so).
    Crashes older than ``interval_s`` are forgotten, so a process that crashes once a day
    is restarted every time, after ``delay_s``.
    """

    #: Restarts allowed within ``interval_s`` (systemd ``StartLimitBurst``).
    burst: int = 5
    #: The window, in seconds (systemd ``StartLimitIntervalSec``).
    interval_s: float = 60.0
    #: Seconds before the first restart (systemd ``RestartSec``); doubles per crash.
    delay_s: float = 0.5
    #: Upper bound of the delay, in seconds (systemd ``RestartMaxDelaySec``).
    max_delay_s: float = 10.0

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("burst must be >= 1 (restarts allowed within interval_s)")
        if self.interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if self.delay_s < 0 or self.max_delay_s < self.delay_s:
            raise ValueError("need 0 <= delay_s <= max_delay_s")

    @classmethod
    def from_env(cls, scope: str = "restart", environ: Mapping[str, str] | None = None) -> RestartPolicy:
        """The policy with ``AF_<SCOPE>_<FIELD>`` overrides (``AF_RESTART_BURST``, ...).

        Raises ValueError naming the variable for a value that does not parse or fit.
        """
        values = env_overrides(cls, scope, environ)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"AF_{scope.upper()}_*: {exc}") from None


class RestartBudget:
    """The crashes of one supervised process inside the policy's window.

    ``crashed()`` is called once per unexpected exit and answers how long to wait before
    restarting, or None when the start limit is hit.
    """

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._crashes: collections.deque[float] = collections.deque()

    def _forget_old(self, now: float) -> None:
        while self._crashes and now - self._crashes[0] > self.policy.interval_s:
            self._crashes.popleft()

    def crashed(self) -> float | None:
        """Record a crash now; seconds to wait before the restart, or None to give up."""
        now = self._clock()
        self._forget_old(now)
        self._crashes.append(now)
        n = len(self._crashes)
        if n > self.policy.burst:
            return None
        return backoff_delay(n, initial_s=self.policy.delay_s, max_s=self.policy.max_delay_s, jitter=0.0)

    @property
    def recent(self) -> int:
        """Crashes within the window, as of now."""
        self._forget_old(self._clock())
        return len(self._crashes)

    def describe(self) -> str:
        """``"3 crashes within 60 s (limit: 5 restarts)"``, for logs and errors."""
        p, n = self.policy, self.recent
        return f"{n} crash{'' if n == 1 else 'es'} within {p.interval_s:g} s (limit: {p.burst} restarts)"
