"""The training loop: one job, from a spec (or its latest checkpoint) to an outcome.

``Trainer(spec, run_dir, control, on_event).run()`` builds the task, model, optimizer and
GrokFast filter, resumes from the newest checkpoint in ``run_dir`` if there is one, and
trains to ``spec.max_steps`` unless the :class:`TrainingControl` cancels or pauses it.

Each optimizer step ``k`` (0-based, ``k`` updates done so far) does, in order: apply pending
control requests; set ``lr = base_lr * min(1, k / warmup_steps)``; forward the batch
``sampler.indices(k)``; ``zero_grad``; ``backward``; GrokFast filter; ``optimizer.step``. The model, split and sampler
come from :func:`setup.build_components` (seed, model init, then the data stream).
This is the paper's loop, so a bare PyTorch loop with the same pieces gives the same losses.

Resume is exact: model, optimizer, filter, base lr, python/torch(/CUDA) RNG states and the
step are checkpointed, batches are a function of (spec, step), and deterministic algorithms
are enabled, so an interrupted-and-resumed run ends with the same weights as a straight one.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import (CheckpointInfo, latest_checkpoint, load_checkpoint, prune_checkpoints,
                         save_checkpoint)
from .control import ControlRequests, TrainingControl
from .events import (CheckpointEvent, ControlAppliedEvent, EvalEvent, LogEvent, ProgressEvent,
                     TrainingEvent, TrainingOutcome)
from .grokfast import GrokfastFilter, GrokfastStats
from .model import DecoderTransformer
from .setup import build_components
from .spec import OptimizerSpec, SpecError, TrainingSpec
from .tasks import Sampler, Task

__all__ = ["Trainer", "EventSink", "resolve_device", "build_optimizer", "warmup_factor",
           "CHECKPOINT_FORMAT"]

EventSink = Callable[[TrainingEvent], None]
CHECKPOINT_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Asking for absent CUDA is a SpecError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("device", "CUDA was requested but is not available on this worker")
    return torch.device(name)


def build_optimizer(spec: OptimizerSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if spec.kind == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
               weight_decay=spec.weight_decay)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier for the update after ``step`` completed updates (the paper's LambdaLR)."""
    if warmup_steps <= 0 or step > warmup_steps:
        return 1.0
    return step / warmup_steps


def _configure_determinism(device: torch.device) -> None:
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


class Trainer:
    """Runs one training job. Not thread-safe itself; talk to it through ``control``.

    Args:
        spec: the job; validated here (raises :class:`SpecError`).
        run_dir: directory of the job's checkpoints (``run_dir/checkpoints``); resumed from
            when it holds any.
        control: optional :class:`TrainingControl`, polled once per step.
        on_event: optional callback receiving every :mod:`events` dataclass; exceptions it
            raises abort the run.
        num_threads: if set, ``torch.set_num_threads`` for this process.
        deterministic: enable ``torch.use_deterministic_algorithms`` (process-wide).
    """

    def __init__(self, spec: TrainingSpec, run_dir: str | os.PathLike[str],
                 control: TrainingControl | None = None, on_event: EventSink | None = None,
                 *, num_threads: int | None = None, deterministic: bool = True) -> None:
        self.spec = spec.validate()
        self.run_dir = Path(run_dir)
        self.control = control
        self._on_event = on_event
        self.num_threads = num_threads
        self.deterministic = deterministic
        self.device: torch.device | None = None
        self.model: DecoderTransformer | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.grokfast: GrokfastFilter | None = None
        self.task: Task | None = None
        self.sampler: Sampler | None = None
        self.step = 0
        self.base_lr = spec.optimizer.lr
        self._latest_eval: dict[str, float] | None = None
        self._last_ckpt: CheckpointInfo | None = None
        self._final_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers
    def _emit(self, event: TrainingEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _setup(self) -> int | None:
        spec = self.spec
        self.device = resolve_device(spec.device)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        if self.deterministic:
            _configure_determinism(self.device)
        parts = build_components(spec)
        self.task = parts.task.to(self.device)
        self.sampler = parts.sampler
        self.model = parts.model.to(self.device)
        self.optimizer = build_optimizer(spec.optimizer, self.model)
        self.grokfast = GrokfastFilter(spec.grokfast) if spec.grokfast.kind != "none" else None
        latest = latest_checkpoint(self.run_dir)
        if latest is None:
            return None
        self._restore(latest)
        return self.step

    def _payload(self) -> dict[str, Any]:
        assert self.model is not None and self.optimizer is not None and self.device is not None
        rng: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "spec": self.spec.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grokfast": self.grokfast.state_dict() if self.grokfast else None,
            "rng": rng,
            "base_lr": self.base_lr,
            "latest_eval": self._latest_eval,
            "metrics": dict(self._final_metrics),
            # How text becomes ids (cognate): {"kind": "byte"} or {"kind": "char",
            # "vocabulary": ...}; the model registry's hand-off records it with the weights.
            "tokenizer": tokenizer.record() if (tokenizer := getattr(self.task, "tokenizer", None)) else None,
        }

    def _restore(self, info: CheckpointInfo) -> None:
        assert self.model is not None and self.optimizer is not None and self.device is not None
        ckpt = load_checkpoint(info.path, map_location=self.device)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{info.path}: unsupported checkpoint format {ckpt.get('format')!r}")
        saved_spec = ckpt["spec"]
        current = self.spec.to_dict()
        for section in ("task", "model", "optimizer", "grokfast"):
            if saved_spec.get(section) != current[section]:
                self._emit(LogEvent("warning", f"resuming from a checkpoint whose {section} spec differs",
                                    int(ckpt["step"])))
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.grokfast is not None and ckpt.get("grokfast") is not None:
            self.grokfast.load_state_dict(ckpt["grokfast"], self.device)
        version, internal, gauss = ckpt["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng"]["cuda"]])
        self.step = int(ckpt["step"])
        self.base_lr = float(ckpt["base_lr"])
        self._latest_eval = ckpt.get("latest_eval")
        self._final_metrics = dict(ckpt.get("metrics") or {})
        self._last_ckpt = info
        self._emit(LogEvent("info", f"resumed from checkpoint at step {self.step}", self.step))

    def _checkpoint(self, reason: str) -> CheckpointInfo:
        if self._last_ckpt is not None and self._last_ckpt.step == self.step:
            return self._last_ckpt
        info = save_checkpoint(self.run_dir, self.step, self._payload())
        removed = prune_checkpoints(self.run_dir, self.spec.keep_checkpoints)
        self._last_ckpt = info
        self._emit(CheckpointEvent(self.step, info.path, reason, info.size_bytes, tuple(removed)))
        return info

    def _apply_controls(self, req: ControlRequests) -> str | None:
        """Apply requests; return ``cancelled``/``paused`` if the run must stop now."""
        if req.lr is not None:
            prev, self.base_lr = self.base_lr, req.lr
            self._emit(ControlAppliedEvent(self.step, "set_lr", {"lr": req.lr}, {"lr": prev}))
        if req.alpha is not None or req.lamb is not None:
            if self.grokfast is None:
                self._emit(LogEvent("warning", "set_grokfast ignored: this job has no GrokFast filter",
                                    self.step))
            else:
                prev = {"alpha": self.grokfast.alpha, "lamb": self.grokfast.lamb}
                if req.alpha is not None:
                    self.grokfast.alpha = req.alpha
                if req.lamb is not None:
                    self.grokfast.lamb = req.lamb
                self._emit(ControlAppliedEvent(
                    self.step, "set_grokfast",
                    {"alpha": self.grokfast.alpha, "lamb": self.grokfast.lamb}, prev))
        if req.checkpoint_now:
            info = self._checkpoint("requested")
            self._emit(ControlAppliedEvent(self.step, "checkpoint_now", {"path": info.path}))
        if req.cancel:
            self._emit(ControlAppliedEvent(self.step, "cancel"))
            return "cancelled"
        if req.pause:
            info = self._checkpoint("pause")
            self._emit(ControlAppliedEvent(self.step, "pause", {"path": info.path}))
            return "paused"
        return None

    def _outcome(self, status: str, resumed_from: int | None) -> TrainingOutcome:
        path = self._last_ckpt.path if self._last_ckpt and status != "cancelled" else None
        return TrainingOutcome(status, self.step, self.spec.max_steps,  # type: ignore[arg-type]
                               dict(self._final_metrics), path, resumed_from)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainingOutcome:
        """Train to ``max_steps`` (or until cancelled/paused); see :class:`TrainingOutcome`."""
        resumed_from = self._setup()
        spec = self.spec
        model, optimizer, task, gf = self.model, self.optimizer, self.task, self.grokfast
        sampler = self.sampler
        assert model is not None and optimizer is not None and task is not None and sampler is not None
        control = self.control
        total = spec.max_steps
        warmup = spec.optimizer.warmup_steps
        loss_fn, correct_fn = task.loss, task.correct

        p_losses: list[torch.Tensor] = []
        p_correct: list[torch.Tensor] = []
        p_count = 0
        e_losses: list[torch.Tensor] = []
        e_correct: list[torch.Tensor] = []
        e_count = 0
        gstats: GrokfastStats | None = None
        lr = self.base_lr * warmup_factor(self.step, warmup)
        start_time = last_time = time.perf_counter()
        last_step = self.step
        model.train()

        while self.step < total:
            if control is not None:
                req = control.take()
                if req is not None:
                    stop = self._apply_controls(req)
                    if stop is not None:
                        return self._outcome(stop, resumed_from)

            lr = self.base_lr * warmup_factor(self.step, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = task.train_batch(sampler.indices(self.step))
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step_after = self.step + 1
            progress_due = step_after % spec.progress_interval == 0 or step_after == total
            if gf is not None:
                stats = gf.apply(model, compute_stats=progress_due)
                if stats is not None:
                    gstats = stats
            optimizer.step()
            self.step = step_after

            c, n = correct_fn(logits.detach(), y)
            d_loss = loss.detach()
            p_losses.append(d_loss)
            p_correct.append(c)
            p_count += n
            e_losses.append(d_loss)
            e_correct.append(c)
            e_count += n

            if self.step % spec.eval_interval == 0 or self.step == total:
                metrics = task.evaluate(model)
                train_loss = torch.stack(e_losses).mean().item()
                train_acc = torch.stack(e_correct).sum().item() / max(e_count, 1)
                e_losses, e_correct, e_count = [], [], 0
                self._latest_eval = {"step": float(self.step), "loss": metrics["loss"],
                                     "accuracy": metrics["accuracy"],
                                     "train_loss": train_loss, "train_accuracy": train_acc,
                                     "gap": train_acc - metrics["accuracy"]}
                if "perplexity" in metrics:
                    self._latest_eval["perplexity"] = metrics["perplexity"]
                self._emit(EvalEvent(self.step, metrics["loss"], metrics["accuracy"],
                                     int(metrics["examples"]), train_loss, train_acc,
                                     train_acc - metrics["accuracy"], metrics.get("perplexity")))

            if progress_due:
                now = time.perf_counter()
                sps = (self.step - last_step) / max(now - last_time, 1e-9)
                train_loss = torch.stack(p_losses).mean().item()
                train_acc = torch.stack(p_correct).sum().item() / max(p_count, 1)
                examples = p_count if task.kind == "modular_arithmetic" else p_count // max(
                    task.sequence_length, 1)
                ev = self._latest_eval
                self._final_metrics = {"train_loss": train_loss, "train_accuracy": train_acc}
                if ev is not None:
                    self._final_metrics.update({f"eval_{k}": v for k, v in ev.items() if k != "step"})
                    self._final_metrics["eval_step"] = ev["step"]
                self._emit(ProgressEvent(
                    step=self.step, total_steps=total, fraction=self.step / total,
                    train_loss=train_loss, train_accuracy=train_acc, lr=lr,
                    steps_per_second=sps, examples_per_second=examples / max(now - last_time, 1e-9),
                    eta_seconds=(total - self.step) / sps if sps > 0 else math.inf,
                    elapsed_seconds=now - start_time,
                    grokfast_alpha=gf.alpha if gf and gf.kind == "ema" else None,
                    grokfast_lamb=gf.lamb if gf else None, grokfast_kind=gf.kind if gf else None,
                    grokfast_window=gf.window if gf and gf.kind == "ma" else None,
                    grokfast_window_filled=gf.window_filled if gf and gf.kind == "ma" else None,
                    slow_grad_norm=gstats.slow_grad_norm if gstats else None,
                    amplification_ratio=gstats.amplification_ratio if gstats else None,
                    eval_step=int(ev["step"]) if ev else None,
                    eval_loss=ev["loss"] if ev else None,
                    eval_accuracy=ev["accuracy"] if ev else None,
                    train_val_gap=ev["gap"] if ev else None,
                ))
                p_losses, p_correct, p_count = [], [], 0
                last_time, last_step = time.perf_counter(), self.step

            if self.step % spec.checkpoint_interval == 0 or self.step == total:
                self._checkpoint("final" if self.step == total else "interval")

        if self._last_ckpt is None or self._last_ckpt.step != self.step:
            self._checkpoint("final")
        return self._outcome("succeeded", resumed_from)
