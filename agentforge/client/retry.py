"""The one retry policy of Agent Forge clients: UNAVAILABLE, idempotent methods only.

Used by the public client (:mod:`agentforge.client`) and by every in-mesh client
(``services.shared.client.make_channel``), so a service calling a service and a user
calling the edge retry the same way. gRPC's own retry machinery applies it (the
``retryPolicy`` of the channel's service config, gRFC A6): a call is resent only when it
failed with UNAVAILABLE *and* its method is listed as idempotent; every other method is
attempted once. Resumable watches (``agentforge.client._base``) reuse the same backoff
for their reconnects.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy", "backoff_delay", "service_config"]


def backoff_delay(attempt: int, *, initial_s: float, max_s: float, multiplier: float = 2.0,
                  jitter: float = 1.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based) of an exponential backoff.

    The ceiling is ``min(max_s, initial_s * multiplier**(attempt - 1))``; the wait is
    ``ceiling * (1 - jitter * U[0, 1))``. ``jitter=1`` is "full jitter" (a wait random in
    (0, ceiling], as gRPC's retries, gRFC A6; AWS Architecture Blog, "Exponential Backoff
    and Jitter", 2015), ``0`` no jitter (the ceiling itself). The one backoff of Agent
    Forge: the client's :class:`RetryPolicy`, the bus's reconnects
    (``services.shared.bus.Backoff``) and the launcher's restarts
    (``services.shared.supervision.RestartPolicy``) all use it.

    Raises ValueError for ``attempt < 1`` or a ``jitter`` outside [0, 1].
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    try:
        ceiling = min(max_s, initial_s * multiplier ** (attempt - 1))
    except OverflowError:  # endless retries (the bus): the growth passed any float long ago
        ceiling = max_s
    return ceiling * (1.0 - jitter * random.random()) if jitter else ceiling


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC retryPolicy applied to idempotent methods (codes: UNAVAILABLE only)."""

    #: Attempts including the first one (gRPC caps this at 5).
    max_attempts: int = 4
    #: First backoff; later ones grow by ``backoff_multiplier`` up to ``max_backoff``
    #: (each actual wait is random in [0, backoff]).
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0

    def to_json(self) -> dict[str, Any]:
        """The ``retryPolicy`` object of a gRPC service config."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s:.3f}s",
            "maxBackoff": f"{self.max_backoff_s:.3f}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): full jitter in
        [0, min(max_backoff, initial · multiplier^(attempt-1))], as gRPC does."""
        return backoff_delay(max(1, attempt), initial_s=self.initial_backoff_s, max_s=self.max_backoff_s,
                             multiplier=self.backoff_multiplier)


def _method_name(method: str) -> dict[str, str]:
    """``/pkg.Svc/M`` or ``pkg.Svc/M`` → one method; ``pkg.Svc`` → all its methods."""
    service, _, name = method.strip("/").partition("/")
    if not service:
        raise ValueError(f"bad method name {method!r}")
    return {"service": service, "method": name} if name else {"service": service}


def service_config(idempotent_methods: Iterable[str], retry: RetryPolicy | None) -> dict[str, Any]:
    """The gRPC service config (JSON object) that retries these idempotent methods."""
    names = [_method_name(m) for m in idempotent_methods]
    if retry is None or not names:
        return {"methodConfig": []}
    return {"methodConfig": [{"name": names, "retryPolicy": retry.to_json()}]}
