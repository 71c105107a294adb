"""Thread-safe control channel between the service layer and a running :class:`Trainer`.

Any thread (a Redis listener, a gRPC handler in-process, a test) calls the request methods;
the trainer calls :meth:`TrainingControl.take` once per step. Requests are coalesced: the
latest lr / GrokFast values win. Plain Python, no torch; create one per worker process (it
holds a lock, so it is not sent across ``spawn``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

__all__ = ["ControlRequests", "TrainingControl"]


@dataclass(frozen=True)
class ControlRequests:
    """Pending requests drained by the trainer in one go."""

    cancel: bool = False
    pause: bool = False
    checkpoint_now: bool = False
    lr: float | None = None
    alpha: float | None = None
    lamb: float | None = None

    @property
    def empty(self) -> bool:
        return self == ControlRequests()


class TrainingControl:
    """Requests for a running job: cancel, pause, set_lr, set_grokfast, checkpoint_now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = False  # fast-path flag read without the lock
        self._cancel = False
        self._pause = False
        self._checkpoint = False
        self._lr: float | None = None
        self._alpha: float | None = None
        self._lamb: float | None = None

    def cancel(self) -> None:
        """Stop before the next optimizer step; no checkpoint is written."""
        with self._lock:
            self._cancel = self._pending = True

    def pause(self) -> None:
        """Write a checkpoint at the current step, then stop with status ``paused``."""
        with self._lock:
            self._pause = self._pending = True

    def checkpoint_now(self) -> None:
        with self._lock:
            self._checkpoint = self._pending = True

    def set_lr(self, lr: float) -> None:
        """New base learning rate (the warmup factor still applies during warmup)."""
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError("lr must be a finite number > 0")
        with self._lock:
            self._lr = float(lr)
            self._pending = True

    def set_grokfast(self, alpha: float | None = None, lamb: float | None = None) -> None:
        """New GrokFast alpha and/or lamb (None leaves a value unchanged)."""
        if alpha is not None and not 0.0 <= alpha < 1.0:
            raise ValueError("alpha must be in [0, 1)")
        if lamb is not None and not (math.isfinite(lamb) and lamb >= 0.0):
            raise ValueError("lamb must be a finite number >= 0")
        with self._lock:
            if alpha is not None:
                self._alpha = float(alpha)
            if lamb is not None:
                self._lamb = float(lamb)
            self._pending = True

    @property
    def cancel_requested(self) -> bool:
        return self._cancel

    def take(self) -> ControlRequests | None:
        """Drain pending requests (None when there are none). Cancel/pause stay set."""
        if not self._pending:
            return None
        with self._lock:
            req = ControlRequests(cancel=self._cancel, pause=self._pause,
                                  checkpoint_now=self._checkpoint, lr=self._lr,
                                  alpha=self._alpha, lamb=self._lamb)
            self._checkpoint = False
            self._lr = self._alpha = self._lamb = None
            self._pending = self._cancel or self._pause
        return req
