"""GrokFast gradient filters (Lee et al. 2024, "Grokfast: Accelerated Grokking by
Amplifying Slow Gradients"), applied between ``backward()`` and ``optimizer.step()``.

The arithmetic follows the paper's reference code (``gradfilter_ema`` / ``gradfilter_ma``)
operation for operation, so results match it bit for bit:

- EMA: ``mu <- alpha*mu + (1-alpha)*g``; ``g <- g + lamb*mu``; ``mu`` starts as the first
  gradient (then receives the same update, as in the paper).
- MA: keep the last ``window`` raw gradients; ``g <- g + lamb*mean(window)``; with
  ``warmup`` only once the window is full.

The filter is keyed by parameter name, so its state survives a checkpoint round-trip.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .spec import GrokfastSpec

__all__ = ["GrokfastStats", "GrokfastFilter"]


@dataclass(frozen=True)
class GrokfastStats:
    """Per-step signals: norm of the slow gradient and ||amplified grad|| / ||raw grad||.

    ``applied`` is False while an MA filter with warmup is still filling its window.
    """

    slow_grad_norm: float
    amplification_ratio: float
    raw_grad_norm: float
    applied: bool


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


class GrokfastFilter:
    """Stateful gradient filter. ``alpha``/``lamb`` may be changed between steps."""

    def __init__(self, spec: GrokfastSpec) -> None:
        if spec.kind not in ("ema", "ma"):
            raise ValueError(f"GrokfastFilter needs kind 'ema' or 'ma', got {spec.kind!r}")
        self.kind = spec.kind
        self.window = spec.window
        self.warmup = spec.warmup
        self._alpha = spec.alpha
        self._lamb = spec.lamb
        self._lock = threading.Lock()
        self._mu: dict[str, torch.Tensor] | None = None
        self._grads: dict[str, deque[torch.Tensor]] | None = None

    # live-settable hyperparameters ------------------------------------------------
    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ValueError("alpha must be in [0, 1)")
        with self._lock:
            self._alpha = float(value)

    @property
    def lamb(self) -> float:
        return self._lamb

    @lamb.setter
    def lamb(self, value: float) -> None:
        if value < 0.0:
            raise ValueError("lamb must be >= 0")
        with self._lock:
            self._lamb = float(value)

    # filtering ----------------------------------------------------------------------
    def apply(self, model: nn.Module, compute_stats: bool = True) -> GrokfastStats | None:
        """Filter the gradients of ``model`` in place; return stats if asked."""
        with self._lock:
            alpha, lamb = self._alpha, self._lamb
        named = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad and p.grad is not None]
        if not named:
            return None
        raw_norm = _global_norm([p.grad for _, p in named]) if compute_stats else None
        if self.kind == "ema":
            slow = self._apply_ema(named, alpha, lamb)
            applied = True
        else:
            slow, applied = self._apply_ma(named, lamb)
        if not compute_stats:
            return None
        assert raw_norm is not None
        new_norm = _global_norm([p.grad for _, p in named])
        slow_norm = _global_norm(slow)
        raw = raw_norm.item()
        return GrokfastStats(
            slow_grad_norm=slow_norm.item(),
            amplification_ratio=(new_norm.item() / raw) if raw > 0 else 1.0,
            raw_grad_norm=raw,
            applied=applied,
        )

    def _apply_ema(self, named: list[tuple[str, nn.Parameter]], alpha: float,
                   lamb: float) -> list[torch.Tensor]:
        if self._mu is None:
            self._mu = {n: p.grad.detach().clone() for n, p in named}
        mus = [self._mu[n] for n, _ in named]
        grads = [p.grad for _, p in named]
        # mu = mu * alpha + g * (1 - alpha)   (two roundings, as the paper's code)
        torch._foreach_mul_(mus, alpha)
        torch._foreach_add_(mus, torch._foreach_mul(grads, 1 - alpha))
        # g = g + mu * lamb
        torch._foreach_add_(grads, torch._foreach_mul(mus, lamb))
        return mus

    def _apply_ma(self, named: list[tuple[str, nn.Parameter]],
                  lamb: float) -> tuple[list[torch.Tensor], bool]:
        if self._grads is None:
            self._grads = {n: deque(maxlen=self.window) for n, _ in named}
        means: list[torch.Tensor] = []
        applied = False
        for n, p in named:
            window = self._grads[n]
            window.append(p.grad.detach().clone())
            avg = sum(window) / len(window)  # python sum: the paper's order of additions
            means.append(avg)
            if not self.warmup or len(window) == self.window:
                p.grad.add_(avg * lamb)
                applied = True
        return means, applied

    @property
    def window_filled(self) -> int:
        """MA: gradients held per parameter so far (0 before the first step)."""
        if not self._grads:
            return 0
        return len(next(iter(self._grads.values())))

    # state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Filter state (tensors on their device) plus the current hyperparameters."""
        state: dict[str, Any] = {"kind": self.kind, "alpha": self._alpha, "lamb": self._lamb,
                                 "window": self.window, "warmup": self.warmup}
        if self._mu is not None:
            state["mu"] = {n: t.clone() for n, t in self._mu.items()}
        if self._grads is not None:
            state["grads"] = {n: [t.clone() for t in d] for n, d in self._grads.items()}
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for a {state.get('kind')!r} filter, not {self.kind!r}")
        self._alpha = float(state["alpha"])
        self._lamb = float(state["lamb"])
        self.window = int(state["window"])
        self.warmup = bool(state["warmup"])
        mu = state.get("mu")
        self._mu = None if mu is None else {n: t.to(device) if device else t.clone() for n, t in mu.items()}
        grads = state.get("grads")
        self._grads = None if grads is None else {
            n: deque((t.to(device) if device else t.clone() for t in ts), maxlen=self.window)
            for n, ts in grads.items()
        }
