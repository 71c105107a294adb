"""Training job specification: frozen dataclasses, validation and dict round-trip.

A :class:`TrainingSpec` is everything a worker needs to run a job; it is plain data
(picklable, ``to_dict``/``from_dict`` round-trip) so the service layer can store it,
queue it and map it from protobuf without knowing anything about torch.

Validation never raises on the first problem: :meth:`TrainingSpec.validate` collects every
violation into one :class:`SpecError` whose ``violations`` name the offending field by its
dotted path (``model.heads``), ready to become ``BadRequest.FieldViolation`` entries.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

__all__ = [
    "BUILTIN_DATASET",
    "FieldViolation",
    "SpecError",
    "TaskSpec",
    "ModelSpec",
    "OptimizerSpec",
    "GrokfastSpec",
    "TrainingSpec",
    "default_spec",
]

BUILTIN_DATASET = "arithmetic_word_problems"
"""Name of the built-in, procedurally generated dataset for the ``cognate`` task."""

TASK_KINDS = ("modular_arithmetic", "cognate")
OPTIMIZER_KINDS = ("adamw", "adam")
GROKFAST_KINDS = ("none", "ema", "ma")
BLOCK_STYLES = ("auto", "pre_ln", "grokfast_paper")
DATA_ORDERS = ("auto", "paper", "seeded")
DEVICES = ("auto", "cpu", "cuda")
DATASET_SUFFIXES = (".txt", ".jsonl")
#: Tokenizers of the cognate task: UTF-8 bytes, or the dataset's characters.
TOKENIZERS = ("byte", "char")
MODULAR_SEQUENCE_LENGTH = 4  # tokens [x, op, y, =]


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: ``field`` is a dotted path such as ``model.heads``."""

    field: str
    message: str


class SpecError(ValueError):
    """A job spec is invalid. Carries one or more :class:`FieldViolation`.

    ``field_path`` and ``message`` describe the first violation (handy for single-field
    errors); ``violations`` lists them all.
    """

    def __init__(self, field_path: str | list[FieldViolation], message: str = "") -> None:
        if isinstance(field_path, list):
            violations = list(field_path)
        else:
            violations = [FieldViolation(field_path, message)]
        if not violations:
            raise ValueError("SpecError needs at least one violation")
        self.violations: list[FieldViolation] = violations
        self.field_path = violations[0].field
        self.message = violations[0].message
        super().__init__("; ".join(f"{v.field}: {v.message}" for v in violations))

    @property
    def fields(self) -> list[str]:
        """The dotted paths of every violation, in order."""
        return [v.field for v in self.violations]


@dataclass(frozen=True)
class TaskSpec:
    """What to learn.

    kind: ``modular_arithmetic`` (x*y mod ``modulus``, the GrokFast paper's task) or
        ``cognate`` (byte-level language model on text).
    modulus: the prime p of the modular task (paper: 97).
    dataset: for ``cognate``: ``arithmetic_word_problems`` (built in) or a path to a local
        ``.txt`` (one document per non-empty line) or ``.jsonl`` (field ``text``) file.
    train_fraction: share of examples (modular) or documents (cognate) used for training.
    tokenizer: for ``cognate``: ``byte`` (UTF-8 bytes plus BOS/EOS/PAD, 259 ids) or
        ``char`` (the dataset's distinct characters plus BOS/EOS/PAD; the vocabulary size
        is known once the dataset is read, and is stored in checkpoints).
    data_order: where the split and the batch order come from.
        ``paper`` (modular only): as the GrokFast reference code: after ``manual_seed(seed)``
        and the model's initialisation, the same torch RNG stream draws the split permutation
        and then one permutation per epoch, each applied to the previous epoch's order.
        ``seeded``: the split from a generator seeded by ``seed``, epoch ``e`` shuffled by a
        generator seeded from ``(seed, e)`` (independent of the model).
        ``auto``: ``paper`` for ``modular_arithmetic``, ``seeded`` for ``cognate``.
    """

    kind: Literal["modular_arithmetic", "cognate"] = "modular_arithmetic"
    modulus: int = 97
    dataset: str = BUILTIN_DATASET
    train_fraction: float = 0.5
    data_order: Literal["auto", "paper", "seeded"] = "auto"
    tokenizer: Literal["byte", "char"] = "byte"

    def resolved_data_order(self) -> Literal["paper", "seeded"]:
        """``data_order`` with ``auto`` resolved for this task kind."""
        if self.data_order == "auto":
            return "paper" if self.kind == "modular_arithmetic" else "seeded"
        return self.data_order  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelSpec:
    """Decoder-only transformer size. ``vocab_size`` 0 = derived from the task/tokenizer.

    block_style: ``pre_ln`` — standard pre-LN blocks (``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``).
        ``grokfast_paper`` — the block of the GrokFast reference code, where ``ln_1``
        normalises the residual stream itself (``x = ln_1(x); x = x + attn(x);
        x = x + mlp(ln_2(x))``), with packed q/k/v projections initialised like
        ``nn.MultiheadAttention``. ``auto``: ``grokfast_paper`` for ``modular_arithmetic``,
        ``pre_ln`` for ``cognate``.
    """

    layers: int = 2
    width: int = 128
    heads: int = 4
    context_length: int = 4
    vocab_size: int = 0
    dropout: float = 0.0
    block_style: Literal["auto", "pre_ln", "grokfast_paper"] = "auto"

    def resolved_block_style(self, task_kind: str) -> Literal["pre_ln", "grokfast_paper"]:
        """``block_style`` with ``auto`` resolved for ``task_kind``."""
        if self.block_style == "auto":
            return "grokfast_paper" if task_kind == "modular_arithmetic" else "pre_ln"
        return self.block_style  # type: ignore[return-value]

    def position_rows(self, task_kind: str) -> int:
        """Rows of the position-embedding table the model is built with.

        ``context_length``, except for the paper's model on ``modular_arithmetic``: the
        reference code builds its table for the whole equation ``[x, op, y, =, answer]``
        (5 rows) although only 4 tokens are ever input. The fifth row is never used, but
        drawing it moves every later weight's random numbers, so a job asking for the
        task's 4 tokens gets the paper's 5-row table (and the paper's initialisation).
        """
        if task_kind == "modular_arithmetic" and self.resolved_block_style(task_kind) == "grokfast_paper":
            return max(self.context_length, MODULAR_SEQUENCE_LENGTH + 1)
        return self.context_length


@dataclass(frozen=True)
class OptimizerSpec:
    """``adam`` adds weight decay to the gradient (L2, as the paper's code); ``adamw`` decouples it.

    The learning rate ramps linearly over ``warmup_steps``: the update after ``k`` completed
    steps uses ``lr * min(1, k / warmup_steps)`` (the paper's ``LambdaLR``).
    """

    kind: Literal["adamw", "adam"] = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    weight_decay: float = 0.005
    warmup_steps: int = 10


@dataclass(frozen=True)
class GrokfastSpec:
    """Gradient filter (Lee et al. 2024). ``ema``: alpha, lamb. ``ma``: window, lamb, warmup.

    warmup: for ``ma``, amplify only once the window holds ``window`` gradients.
    """

    kind: Literal["none", "ema", "ma"] = "ema"
    alpha: float = 0.98
    lamb: float = 2.0
    window: int = 100
    warmup: bool = True


@dataclass(frozen=True)
class TrainingSpec:
    """A complete training job. Intervals are in optimizer steps.

    keep_checkpoints: how many of the newest checkpoints to keep on disk.
    device: ``auto`` uses CUDA when available, else CPU.
    """

    task: TaskSpec = field(default_factory=TaskSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    grokfast: GrokfastSpec = field(default_factory=GrokfastSpec)
    batch_size: int = 512
    max_steps: int = 1000
    eval_interval: int = 10
    checkpoint_interval: int = 250
    progress_interval: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"

    # ----------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingSpec":
        """Build from a nested mapping; missing keys take defaults, unknown keys are errors.

        Raises :class:`SpecError` for unknown fields or values of the wrong type; it does not
        run :meth:`validate`.
        """
        violations: list[FieldViolation] = []
        sections = {"task": TaskSpec, "model": ModelSpec, "optimizer": OptimizerSpec,
                    "grokfast": GrokfastSpec}
        kwargs: dict[str, Any] = {}
        top_fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in top_fields:
                violations.append(FieldViolation(key, "unknown field"))
            elif key in sections:
                if isinstance(value, sections[key]):
                    kwargs[key] = value
                elif not isinstance(value, Mapping):
                    violations.append(FieldViolation(key, "must be a mapping"))
                else:
                    kwargs[key] = _build_section(sections[key], key, value, violations)
            else:
                kwargs[key] = _coerce(top_fields[key], key, value, cls(), violations)
        if violations:
            raise SpecError(violations)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "TrainingSpec":
        """A copy with top-level fields replaced (sections take dataclass instances)."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- validation
    def validate(self, *, check_files: bool = True) -> "TrainingSpec":
        """Raise :class:`SpecError` listing every invalid field; return ``self`` if valid."""
        v: list[FieldViolation] = []

        def bad(path: str, message: str) -> None:
            v.append(FieldViolation(path, message))

        t, m, o, g = self.task, self.model, self.optimizer, self.grokfast
        if t.kind not in TASK_KINDS:
            bad("task.kind", f"unknown task {t.kind!r}; expected one of {', '.join(TASK_KINDS)}")
        if t.kind == "modular_arithmetic" and not (isinstance(t.modulus, int) and t.modulus >= 2):
            bad("task.modulus", "must be an integer >= 2")
        if t.data_order not in DATA_ORDERS:
            bad("task.data_order", f"unknown data order {t.data_order!r}; expected one of {', '.join(DATA_ORDERS)}")
        elif t.data_order == "paper" and t.kind == "cognate":
            bad("task.data_order", "'paper' applies to modular_arithmetic only")
        if not 0.0 < t.train_fraction < 1.0:
            bad("task.train_fraction", "must be in (0, 1)")
        if t.tokenizer not in TOKENIZERS:
            bad("task.tokenizer", f"unknown tokenizer {t.tokenizer!r}; expected one of {', '.join(TOKENIZERS)}")
        elif t.tokenizer == "char" and t.kind != "cognate":
            bad("task.tokenizer", "'char' applies to cognate only")
        if t.kind == "cognate":
            if not t.dataset:
                bad("task.dataset", "must name a dataset")
            elif t.dataset != BUILTIN_DATASET:
                if not t.dataset.endswith(DATASET_SUFFIXES):
                    bad("task.dataset", f"expected {BUILTIN_DATASET!r} or a .txt/.jsonl file path")
                elif check_files and not os.path.isfile(t.dataset):
                    bad("task.dataset", f"dataset file not found: {t.dataset}")

        if m.layers < 1:
            bad("model.layers", "must be >= 1")
        if m.width < 1:
            bad("model.width", "must be >= 1")
        if m.heads < 1:
            bad("model.heads", "must be >= 1")
        elif m.width >= 1 and m.width % m.heads != 0:
            bad("model.width", f"width {m.width} is not divisible by heads {m.heads}")
        if t.kind == "modular_arithmetic" and m.context_length < MODULAR_SEQUENCE_LENGTH:
            bad("model.context_length", f"must be >= {MODULAR_SEQUENCE_LENGTH} for modular_arithmetic")
        elif m.context_length < 2:
            bad("model.context_length", "must be >= 2")
        if m.vocab_size < 0:
            bad("model.vocab_size", "must be >= 0 (0 = derived from the task)")
        elif (m.vocab_size and t.kind in TASK_KINDS and t.tokenizer in TOKENIZERS
              and (needed := required_vocab_size(t)) is not None and m.vocab_size < needed):
            bad("model.vocab_size", f"must be 0 or >= {needed} for this task")
        if not 0.0 <= m.dropout < 1.0:
            bad("model.dropout", "must be in [0, 1)")
        if m.block_style not in BLOCK_STYLES:
            bad("model.block_style", f"unknown block style {m.block_style!r}; expected one of {', '.join(BLOCK_STYLES)}")

        if o.kind not in OPTIMIZER_KINDS:
            bad("optimizer.kind", f"unknown optimizer {o.kind!r}; expected one of {', '.join(OPTIMIZER_KINDS)}")
        if not o.lr > 0.0:
            bad("optimizer.lr", "must be > 0")
        if not 0.0 <= o.beta1 < 1.0:
            bad("optimizer.beta1", "must be in [0, 1)")
        if not 0.0 <= o.beta2 < 1.0:
            bad("optimizer.beta2", "must be in [0, 1)")
        if o.weight_decay < 0.0:
            bad("optimizer.weight_decay", "must be >= 0")
        if o.warmup_steps < 0:
            bad("optimizer.warmup_steps", "must be >= 0")

        if g.kind not in GROKFAST_KINDS:
            bad("grokfast.kind", f"unknown filter {g.kind!r}; expected one of {', '.join(GROKFAST_KINDS)}")
        if not 0.0 <= g.alpha < 1.0:
            bad("grokfast.alpha", "must be in [0, 1)")
        if g.lamb < 0.0:
            bad("grokfast.lamb", "must be >= 0")
        if g.window < 1:
            bad("grokfast.window", "must be >= 1")

        for name in ("batch_size", "max_steps", "eval_interval", "checkpoint_interval",
                     "progress_interval", "keep_checkpoints"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if not 0 <= self.seed < 2**63:
            bad("seed", "must be in [0, 2**63)")
        if self.device not in DEVICES:
            bad("device", f"unknown device {self.device!r}; expected one of {', '.join(DEVICES)}")
        if v:
            raise SpecError(v)
        return self


def required_vocab_size(task: TaskSpec) -> int | None:
    """Smallest vocabulary the task needs (the derived size when ``vocab_size`` is 0);
    None for the ``char`` tokenizer, whose size is the dataset's (the task knows it)."""
    if task.kind == "modular_arithmetic":
        return task.modulus + 2  # residues, '=' (p) and the operator (p + 1)
    if task.tokenizer == "char":
        return None
    return 259  # 256 bytes + BOS, EOS, PAD


def default_spec(kind: str = "modular_arithmetic") -> TrainingSpec:
    """Defaults per task.

    ``modular_arithmetic``: the GrokFast paper's Grokfast-EMA setup (2x128x4 decoder with the
    paper's block, Adam lr 1e-3, betas 0.9/0.98, weight decay 0.005, batch 512, alpha 0.98,
    lamb 2.0, the paper's split and batch order). ``context_length`` 5 as the paper's model
    (its position table has a row for the answer token, which is never input): it only
    matters for which random numbers the initialisation draws.
    ``cognate``: a ~0.4M-parameter byte-level LM on the built-in word problems that visibly
    trains in a few minutes on 2 CPU cores.
    """
    if kind == "modular_arithmetic":
        return TrainingSpec(model=ModelSpec(context_length=5))
    if kind == "cognate":
        return TrainingSpec(
            task=TaskSpec(kind="cognate", dataset=BUILTIN_DATASET, train_fraction=0.9),
            model=ModelSpec(layers=2, width=128, heads=4, context_length=64, block_style="pre_ln"),
            optimizer=OptimizerSpec(kind="adamw", lr=3e-3, weight_decay=0.01, warmup_steps=50),
            grokfast=GrokfastSpec(kind="none"),
            batch_size=32,
            max_steps=1500,
            eval_interval=100,
            checkpoint_interval=500,
            progress_interval=10,
        )
    raise SpecError("task.kind", f"unknown task {kind!r}; expected one of {', '.join(TASK_KINDS)}")


def _build_section(cls: type, prefix: str, data: Mapping[str, Any],
                   violations: list[FieldViolation]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}"
        if key not in fields:
            violations.append(FieldViolation(path, "unknown field"))
            continue
        kwargs[key] = _coerce(fields[key], path, value, defaults, violations)
    return cls(**kwargs)


def _coerce(f: dataclasses.Field, path: str, value: Any, defaults: Any,
            violations: list[FieldViolation]) -> Any:
    """Check ``value`` against the type of the field's default (ints accepted for floats)."""
    default = getattr(defaults, f.name)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        violations.append(FieldViolation(path, f"expected {type(default).__name__}, got {type(value).__name__}"))
        return default
    return value
