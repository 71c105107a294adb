"""Events the trainer emits through ``on_event(event)``: plain dataclasses.

Every event has a ``kind`` (``progress``, ``eval``, ``checkpoint``, ``control_applied``,
``log``) and :meth:`to_dict`; the service layer adds the per-job sequence number and maps
them to protobuf. ``wall_time`` is seconds since the epoch when the event was created.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

__all__ = [
    "TrainingEvent",
    "ProgressEvent",
    "EvalEvent",
    "CheckpointEvent",
    "ControlAppliedEvent",
    "LogEvent",
    "TrainingOutcome",
]


@dataclass(frozen=True)
class TrainingEvent:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class ProgressEvent(TrainingEvent):
    """Training progress. ``train_loss``/``train_accuracy`` average the steps since the
    previous progress event. ``eval_*`` repeat the latest evaluation (None before the first).
    ``train_val_gap`` = latest eval's running train accuracy - validation accuracy.
    """

    kind: ClassVar[str] = "progress"
    step: int
    total_steps: int
    fraction: float
    train_loss: float
    train_accuracy: float
    lr: float
    steps_per_second: float
    examples_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    grokfast_alpha: float | None = None
    grokfast_lamb: float | None = None
    #: ``ema`` or ``ma`` (None without a filter); MA reports its window, not an alpha.
    grokfast_kind: str | None = None
    grokfast_window: int | None = None
    grokfast_window_filled: int | None = None
    slow_grad_norm: float | None = None
    amplification_ratio: float | None = None
    eval_step: int | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    train_val_gap: float | None = None
    wall_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class EvalEvent(TrainingEvent):
    """Evaluation over the full held-out split (capped windows for cognate)."""

    kind: ClassVar[str] = "eval"
    step: int
    validation_loss: float
    validation_accuracy: float
    validation_examples: int
    train_loss: float
    train_accuracy: float
    train_val_gap: float
    validation_perplexity: float | None = None
    wall_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CheckpointEvent(TrainingEvent):
    """A checkpoint was written. reason: interval | final | pause | requested."""

    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str
    reason: str
    size_bytes: int
    removed: tuple[str, ...] = ()
    wall_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ControlAppliedEvent(TrainingEvent):
    """A control request took effect before optimizer step ``step + 1``.

    action: set_lr | set_grokfast | checkpoint_now | pause | cancel; ``values`` holds the
    new settings (and ``previous`` the old ones).
    """

    kind: ClassVar[str] = "control_applied"
    step: int
    action: str
    values: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] = field(default_factory=dict)
    wall_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class LogEvent(TrainingEvent):
    kind: ClassVar[str] = "log"
    level: Literal["debug", "info", "warning", "error"]
    message: str
    step: int = 0
    wall_time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class TrainingOutcome:
    """What :meth:`Trainer.run` returns.

    status: succeeded (reached max_steps) | cancelled | paused. ``metrics`` holds the final
    ``train_loss``, ``train_accuracy`` and the latest ``eval_*`` values.
    """

    status: Literal["succeeded", "cancelled", "paused"]
    step: int
    total_steps: int
    metrics: dict[str, float]
    checkpoint_path: str | None
    resumed_from_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
