"""Protobuf ↔ engine: job specs, spec errors and trainer events.

The contract's zero-means-default rules (see ``training_job.proto``) are applied here,
once, so the engine always receives a complete :class:`TrainingSpec`.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path

from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.shared.errors import FailedPrecondition, InvalidArgument
from services.training.engine import (BUILTIN_DATASET, CheckpointEvent, ControlAppliedEvent, EvalEvent,
                                      GrokfastSpec, LogEvent, ModelSpec, OptimizerSpec, ProgressEvent,
                                      SpecError, TaskSpec, TrainingEvent, TrainingSpec)
from services.training.engine.tasks import CharTokenizer, DatasetProfile, dataset_profile, split_token_counts

__all__ = [
    "DATASET_SCAN_MAX_CHARS",
    "SPEC_PREFIX",
    "check_dataset",
    "checkpoint_proto",
    "event_proto",
    "invalid_spec",
    "proto_field_path",
    "spec_from_proto",
    "validate_spec",
]

#: Where the spec sits in a CreateTrainingJobRequest.
SPEC_PREFIX = "training_job.spec"

_TASKS = {job_pb.TASK_KIND_MODULAR_ARITHMETIC: "modular_arithmetic", job_pb.TASK_KIND_COGNATE: "cognate"}
_OPTIMIZERS = {job_pb.OPTIMIZER_KIND_UNSPECIFIED: "adamw", job_pb.OPTIMIZER_KIND_ADAMW: "adamw",
               job_pb.OPTIMIZER_KIND_ADAM: "adam"}
_GROKFAST = {job_pb.GROKFAST_KIND_UNSPECIFIED: "none", job_pb.GROKFAST_KIND_NONE: "none",
             job_pb.GROKFAST_KIND_EMA: "ema", job_pb.GROKFAST_KIND_MA: "ma"}
_DEVICES = {job_pb.DEVICE_UNSPECIFIED: "auto", job_pb.DEVICE_AUTO: "auto", job_pb.DEVICE_CPU: "cpu",
            job_pb.DEVICE_CUDA: "cuda"}
_TRIGGERS = {"interval": job_pb.CHECKPOINT_TRIGGER_INTERVAL, "final": job_pb.CHECKPOINT_TRIGGER_FINAL,
             "requested": job_pb.CHECKPOINT_TRIGGER_REQUESTED, "pause": job_pb.CHECKPOINT_TRIGGER_PAUSE}
_SEVERITY = {"debug": ev_pb.LOG_SEVERITY_DEBUG, "info": ev_pb.LOG_SEVERITY_INFO,
             "warning": ev_pb.LOG_SEVERITY_WARNING, "error": ev_pb.LOG_SEVERITY_ERROR}

#: Engine field paths whose proto name differs (the rest keep their dotted name).
_ENGINE_TO_PROTO = {
    "optimizer.lr": "optimizer.learning_rate",
    "task.tokenizer": "task.dataset.tokenizer",
    "device": "device",
}


def proto_field_path(engine_path: str, spec: job_pb.TrainingJobSpec | None = None) -> str:
    """``model.heads`` → ``training_job.spec.model.heads``; ``task.dataset`` → ``…dataset.path``."""
    path = _ENGINE_TO_PROTO.get(engine_path, engine_path)
    if path == "task.dataset" and spec is not None:
        source = spec.task.dataset.WhichOneof("source")
        path = f"task.dataset.{source}" if source else "task.dataset"
    return f"{SPEC_PREFIX}.{path}"


def invalid_spec(error: SpecError, spec: job_pb.TrainingJobSpec | None = None) -> InvalidArgument:
    violations = [(proto_field_path(v.field, spec), v.message) for v in error.violations]
    return InvalidArgument("invalid training job spec: " + "; ".join(f"{f}: {m}" for f, m in violations),
                           violations)


def spec_from_proto(spec: job_pb.TrainingJobSpec) -> TrainingSpec:
    """The engine spec for a (protovalidate-valid) proto spec, defaults applied.

    Raises :class:`InvalidArgument` for what the engine cannot express (unknown task,
    cognate without a dataset).
    """
    t, m, o, g = spec.task, spec.model, spec.optimizer, spec.grokfast
    kind = _TASKS.get(t.kind)
    if kind is None:
        raise InvalidArgument("unknown task", [(f"{SPEC_PREFIX}.task.kind", f"unknown task kind {t.kind}")])
    dataset = BUILTIN_DATASET
    tokenizer = "byte"
    if kind == "cognate":
        source = t.dataset.WhichOneof("source")
        if source is None:
            raise InvalidArgument("cognate needs a dataset", [
                (f"{SPEC_PREFIX}.task.dataset", "set builtin or path for TASK_KIND_COGNATE")])
        if source == "path":
            dataset = t.dataset.path
        if t.dataset.tokenizer == job_pb.TOKENIZER_CHAR:
            tokenizer = "char"
    train_fraction = t.train_fraction or (0.5 if kind == "modular_arithmetic" else 0.9)
    max_steps = int(spec.max_steps)
    return TrainingSpec(
        task=TaskSpec(kind=kind, modulus=t.modulus or 97, dataset=dataset,  # type: ignore[arg-type]
                      train_fraction=train_fraction, tokenizer=tokenizer),  # type: ignore[arg-type]
        model=ModelSpec(layers=m.layers, width=m.width, heads=m.heads, context_length=m.context_length,
                        vocab_size=m.vocab_size, dropout=m.dropout),
        optimizer=OptimizerSpec(kind=_OPTIMIZERS[o.kind], lr=o.learning_rate or 1e-3,  # type: ignore[arg-type]
                                beta1=o.beta1 or 0.9, beta2=o.beta2 or 0.98, weight_decay=o.weight_decay,
                                warmup_steps=int(o.warmup_steps)),
        grokfast=GrokfastSpec(kind=_GROKFAST[g.kind], alpha=g.alpha or 0.98,  # type: ignore[arg-type]
                              lamb=g.lamb or 2.0, window=g.window or 100, warmup=g.warmup),
        batch_size=spec.batch_size,
        max_steps=max_steps,
        eval_interval=int(spec.eval_interval) or max(1, max_steps // 20),
        checkpoint_interval=int(spec.checkpoint_interval) or max(1, max_steps // 10),
        progress_interval=int(spec.progress_interval) or 1,
        keep_checkpoints=spec.keep_checkpoints or 3,
        seed=int(spec.seed),
        device=_DEVICES[spec.device],  # type: ignore[arg-type]
    )


def check_device(spec: job_pb.TrainingJobSpec) -> None:
    """FailedPrecondition ``DEVICE_UNAVAILABLE`` for a device this machine lacks.

    The workers run on this machine (``spawn``ed by the service), so the service knows at
    create time that ``DEVICE_CUDA`` without a GPU can never run: reject it instead of
    accepting a job that is bound to fail (issue 8).
    """
    if spec.device == job_pb.DEVICE_CUDA:
        import torch

        if not torch.cuda.is_available():
            raise FailedPrecondition("spec.device is DEVICE_CUDA but this deployment has no CUDA device; "
                                     "use DEVICE_CPU or DEVICE_AUTO", reason="DEVICE_UNAVAILABLE",
                                     metadata={"field": "spec.device"})


def check_dataset_path(spec: job_pb.TrainingJobSpec, roots: Sequence[Path]) -> None:
    """InvalidArgument ``DATASET_NOT_ALLOWED`` unless ``dataset.path`` is a regular file
    under one of ``roots`` (after resolving symlinks and ``..``).

    Missing, unreadable and outside-the-roots paths get the same answer, so the API
    does not tell which files exist on the service's machine (issue 8).
    """
    if spec.task.dataset.WhichOneof("source") != "path":
        return
    raw = spec.task.dataset.path
    try:
        resolved = Path(raw).resolve(strict=True)
        allowed = resolved.is_file() and os.access(resolved, os.R_OK) and any(
            resolved.is_relative_to(root) for root in roots)
    except (OSError, RuntimeError, ValueError):
        allowed = False
    if not allowed:
        raise _dataset_not_allowed()


def _dataset_not_allowed() -> InvalidArgument:
    field = f"{SPEC_PREFIX}.task.dataset.path"
    return InvalidArgument(
        "dataset path must name a readable .txt/.jsonl file under a configured data root",
        [(field, "not a readable file under a configured data root (AF_TRAINING_DATASET_ROOTS)")],
        reason="DATASET_NOT_ALLOWED")


#: How much of a dataset file :func:`check_dataset` reads (characters, whole
#: documents): a file larger than this is checked on its first 32 Mi characters, and
#: the worker checks the rest when it builds the task.
DATASET_SCAN_MAX_CHARS = 32 * 2**20


@functools.lru_cache(maxsize=128)
def _profile(dataset: str, version: tuple[int, ...], seed: int) -> DatasetProfile:
    """:func:`dataset_profile`, cached per file (``version``: mtime, size, inode —
    a rewritten file is read again) or, for the built-in dataset, per seed."""
    del version  # part of the cache key only
    return dataset_profile(dataset, seed, max_chars=DATASET_SCAN_MAX_CHARS)


def check_dataset(engine: TrainingSpec, spec: job_pb.TrainingJobSpec) -> None:
    """InvalidArgument when a ``cognate`` job's dataset cannot give the worker a task,
    with the field violation the worker's error would carry:

    - a file that is empty, not UTF-8 or malformed ``.jsonl`` (``…task.dataset.path``);
    - a training or validation split shorter than ``context_length + 1`` tokens, counted
      as the job's tokenizer encodes (``…task.dataset.path``; the message names the split,
      its tokens and the tokens needed);
    - ``TOKENIZER_CHAR`` only: more than :attr:`CharTokenizer.MAX_CHARACTERS` distinct
      characters (``…task.dataset.tokenizer``), or ``model.vocab_size`` below the
      characters plus BOS, EOS and PAD (``…model.vocab_size``, naming the size needed).

    The worker (:class:`~services.training.engine.tasks.CognateTask`) would find the
    same when it builds the task and fail the job; this finds it at create, so nothing
    is created. Blocking file I/O (a bounded read, :data:`DATASET_SCAN_MAX_CHARS`,
    cached per path, mtime, size and inode): call it off the event loop. Call after
    :func:`validate_spec` (the path is allowed and exists). Past the bound only the
    worker's own checks apply.
    """
    t = engine.task
    if t.kind != "cognate":
        return
    try:
        if t.dataset == BUILTIN_DATASET:
            profile = _profile(t.dataset, (), engine.seed)
        else:
            st = os.stat(t.dataset)
            profile = _profile(os.path.realpath(t.dataset), (st.st_mtime_ns, st.st_size, st.st_ino), 0)
    except SpecError as exc:
        raise invalid_spec(exc, spec) from None
    except UnicodeDecodeError:
        raise invalid_spec(SpecError("task.dataset", "the file is not UTF-8 text; the tokenizers read UTF-8"),
                           spec) from None
    except OSError:  # removed or made unreadable since validate_spec looked
        raise _dataset_not_allowed() from None
    n = len(profile.characters)
    at_least = "" if profile.complete else "at least "
    error: SpecError | None = None
    if t.tokenizer == "char" and n > CharTokenizer.MAX_CHARACTERS:
        error = SpecError("task.tokenizer", f"the dataset has {at_least}{n} distinct characters; TOKENIZER_CHAR "
                                            f"allows at most {CharTokenizer.MAX_CHARACTERS} (use TOKENIZER_BYTE)")
    elif t.tokenizer == "char" and engine.model.vocab_size and engine.model.vocab_size < n + 3:
        error = SpecError("model.vocab_size", f"must be 0 or >= {n + 3}: the dataset has {at_least}{n} distinct "
                                              "characters plus BOS, EOS and PAD")
    elif profile.complete:  # a prefix's splits say nothing of the whole file's
        need = engine.model.context_length + 1
        splits = split_token_counts(profile.token_lengths(t.tokenizer), t.train_fraction, engine.seed)
        for split, tokens in zip(("training", "validation"), splits):
            if tokens < need:
                error = SpecError("task.dataset", (
                    f"the {split} split has {tokens} {t.tokenizer} tokens (train_fraction {t.train_fraction:g} of "
                    f"{len(profile.char_lengths)} documents); need at least context_length + 1 = {need}: use a "
                    "longer dataset or a smaller model.context_length"))
                break
    if error is not None:
        raise invalid_spec(error, spec)


def validate_spec(spec: job_pb.TrainingJobSpec, dataset_roots: Sequence[Path] | None = None) -> TrainingSpec:
    """Domain validation beyond protovalidate (files, vocab, engine rules) → InvalidArgument.

    With ``dataset_roots``, a dataset path must lie under one of them
    (:func:`check_dataset_path`), checked before the engine opens the file.
    """
    if dataset_roots is not None:
        check_dataset_path(spec, dataset_roots)
    engine_spec = spec_from_proto(spec)
    try:
        return engine_spec.validate(check_files=True)
    except SpecError as exc:
        raise invalid_spec(exc, spec) from None


# ---------------------------------------------------------------------------- events
def _finite(value: float | None) -> float:
    return 0.0 if value is None or not math.isfinite(value) else float(value)


def progress_proto(e: ProgressEvent) -> job_pb.TrainingProgress:
    p = job_pb.TrainingProgress(
        step=e.step, total_steps=e.total_steps, fraction_done=e.fraction, train_loss=_finite(e.train_loss),
        train_accuracy=e.train_accuracy, learning_rate=e.lr, steps_per_second=_finite(e.steps_per_second),
        examples_per_second=_finite(e.examples_per_second), eta_seconds=_finite(e.eta_seconds),
        train_val_gap=_finite(e.train_val_gap),
    )
    if e.grokfast_kind is not None or e.grokfast_alpha is not None:
        kind = job_pb.GROKFAST_KIND_MA if e.grokfast_kind == "ma" else job_pb.GROKFAST_KIND_EMA
        p.grokfast.CopyFrom(job_pb.GrokfastStats(
            slow_gradient_norm=_finite(e.slow_grad_norm), amplification_ratio=_finite(e.amplification_ratio),
            alpha=_finite(e.grokfast_alpha), lamb=_finite(e.grokfast_lamb), kind=kind,
            window=e.grokfast_window or 0, window_filled=e.grokfast_window_filled or 0))
    if e.eval_step is not None:
        p.eval.CopyFrom(job_pb.EvalMetrics(step=e.eval_step, loss=_finite(e.eval_loss),
                                           accuracy=_finite(e.eval_accuracy)))
    return p


def checkpoint_proto(job_name: str, e: CheckpointEvent, metrics: dict[str, float], total_steps: int) -> job_pb.Checkpoint:
    """The Checkpoint resource for a written file (hashes the file)."""
    digest = hashlib.sha256()
    path = Path(e.path)
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
    except FileNotFoundError:  # pruned already
        sha = ""
    ckpt = job_pb.Checkpoint(
        name=f"{job_name}/checkpoints/{e.step}", step=e.step, size_bytes=e.size_bytes, sha256=sha,
        metrics={k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)},
        final=e.reason == "final" or e.step >= total_steps,
        trigger=_TRIGGERS.get(e.reason, job_pb.CHECKPOINT_TRIGGER_UNSPECIFIED),
        uri=path.resolve().as_uri(),
    )
    ckpt.create_time.FromNanoseconds(int(e.wall_time * 1e9))
    return ckpt


def event_proto(e: TrainingEvent) -> ev_pb.TrainingJobEvent | None:
    """A TrainingJobEvent for an engine event (checkpoints: use :func:`checkpoint_proto`)."""
    out = ev_pb.TrainingJobEvent()
    wall = getattr(e, "wall_time", None)
    if wall is not None:
        out.time.FromNanoseconds(int(wall * 1e9))
    if isinstance(e, ProgressEvent):
        out.progress.CopyFrom(progress_proto(e))
    elif isinstance(e, EvalEvent):
        out.eval_completed.CopyFrom(job_pb.EvalMetrics(
            step=e.step, loss=_finite(e.validation_loss), accuracy=e.validation_accuracy,
            perplexity=_finite(e.validation_perplexity)))
    elif isinstance(e, ControlAppliedEvent):
        applied = ev_pb.ControlApplied(step=e.step)
        if e.action == "set_lr":
            applied.learning_rate = float(e.values["lr"])
        elif e.action == "set_grokfast":
            applied.grokfast_alpha = float(e.values["alpha"])
            applied.grokfast_lamb = float(e.values["lamb"])
        elif e.action == "checkpoint_now":
            applied.checkpoint_requested = True
        out.control_applied.CopyFrom(applied)
    elif isinstance(e, LogEvent):
        out.log.CopyFrom(ev_pb.LogLine(severity=_SEVERITY.get(e.level, ev_pb.LOG_SEVERITY_INFO),
                                       message=e.message))
    else:
        return None
    return out
