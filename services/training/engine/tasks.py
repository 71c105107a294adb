"""Tasks: datasets, tokenisation, losses and the deterministic batch sampler.

Everything is generated or read locally; nothing is downloaded.

- :class:`ModularArithmeticTask` — the GrokFast paper's task (Lee et al. 2024, code built
  on Power et al.'s grokking setup): every pair ``x in [0, p)``, ``y in [1, p)``, tokens
  ``[x, op, y, =]`` with ``= = p`` and ``op = p + 1``, target ``x*y mod p`` predicted at the
  last position; a random split from the seed; full-set evaluation.
- :class:`CognateTask` — next-token language modelling on the built-in arithmetic word
  problems or a local ``.txt``/``.jsonl`` file, in windows of ``context_length`` tokens,
  over UTF-8 bytes (:class:`ByteTokenizer`) or the dataset's characters
  (:class:`CharTokenizer`).

Training batches come from a sampler; both cut each epoch's order into batches (the last
one may be short, as in the paper's loop) and make the batch at a step a pure function of
their construction arguments and the step, so resuming needs no RNG state:

- :class:`EpochSampler` (``data_order="seeded"``): epoch ``e`` is a permutation drawn from a
  ``torch.Generator`` seeded by ``(seed, e)``.
- :class:`StreamSampler` (``data_order="paper"``): the GrokFast reference loop's order. One
  generator stream (the global torch RNG right after the model's initialisation, which also
  drew the split) draws a permutation per epoch, and each is applied to the previous epoch's
  order (``train = train[randperm(n)]``). Reaching epoch ``e`` replays the stream from its
  start state, ``e + 1`` small ``randperm`` calls.
"""

from __future__ import annotations

import json
import math
import random
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .spec import BUILTIN_DATASET, SpecError, TaskSpec

__all__ = [
    "Task",
    "ModularArithmeticTask",
    "CognateTask",
    "ByteTokenizer",
    "CharTokenizer",
    "EpochSampler",
    "StreamSampler",
    "Sampler",
    "epoch_seed",
    "build_task",
    "DatasetProfile",
    "dataset_profile",
    "generate_word_problems",
    "iter_text_documents",
    "load_text_documents",
    "split_documents",
    "split_token_counts",
]

_MASK63 = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator that shuffles epoch ``epoch`` of a run seeded ``seed``."""
    return (seed * 1_000_003 + (epoch + 1) * _GOLDEN) & _MASK63


class EpochSampler:
    """Deterministic shuffled batches: step -> example indices, a function of (seed, step)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        if num_examples < 1:
            raise ValueError("no training examples")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = math.ceil(num_examples / batch_size)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        """Indices (CPU, int64) of the batch used by optimizer step ``step`` (0-based)."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._perm = torch.randperm(self.num_examples, generator=gen)
            self._epoch = epoch
        return self._perm[b * self.batch_size:(b + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        """Identity of the sampling scheme (the position is the step itself)."""
        return {"num_examples": self.num_examples, "batch_size": self.batch_size, "seed": self.seed}


class StreamSampler:
    """The reference loop's batches: epoch orders composed from one generator stream.

    ``generator_state`` is the state of a CPU ``torch.Generator`` (e.g. ``get_state()``) at
    the point the first epoch's permutation is drawn; it is copied, not consumed.
    """

    def __init__(self, num_examples: int, batch_size: int, generator_state: torch.Tensor) -> None:
        if num_examples < 1:
            raise ValueError("no training examples")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.steps_per_epoch = math.ceil(num_examples / batch_size)
        self._start_state = generator_state.clone()
        self._restart()

    def _restart(self) -> None:
        self._gen = torch.Generator().set_state(self._start_state)
        self._epoch = -1
        self._order = torch.arange(self.num_examples)

    def indices(self, step: int) -> torch.Tensor:
        """Indices (CPU, int64) of the batch used by optimizer step ``step`` (0-based)."""
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch < self._epoch:
            self._restart()
        while self._epoch < epoch:
            self._order = self._order[torch.randperm(self.num_examples, generator=self._gen)]
            self._epoch += 1
        return self._order[b * self.batch_size:(b + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        """Identity of the sampling scheme (the position is the step itself)."""
        return {"num_examples": self.num_examples, "batch_size": self.batch_size}


Sampler = EpochSampler | StreamSampler


class Task(ABC):
    """A supervised sequence task whose data lives in tensors (moved with :meth:`to`)."""

    kind: str
    vocab_size: int
    sequence_length: int
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    eval_inputs: torch.Tensor
    eval_targets: torch.Tensor
    eval_batch_size: int = 1024

    @property
    def num_train_examples(self) -> int:
        return int(self.train_inputs.shape[0])

    def to(self, device: torch.device) -> "Task":
        for name in ("train_inputs", "train_targets", "eval_inputs", "eval_targets"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices.to(self.train_inputs.device)
        return self.train_inputs[idx], self.train_targets[idx]

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of model output ``(B, T, V)`` against ``targets``."""

    @abstractmethod
    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(number of correct predictions as a 0-dim tensor, number of predictions)."""

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Loss and accuracy over the whole held-out split (model left in eval mode)."""
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.eval_inputs.device)
        correct_sum = torch.zeros((), dtype=torch.int64, device=self.eval_inputs.device)
        count = 0
        for start in range(0, int(self.eval_inputs.shape[0]), self.eval_batch_size):
            x = self.eval_inputs[start:start + self.eval_batch_size]
            y = self.eval_targets[start:start + self.eval_batch_size]
            logits = model(x)
            loss_sum += self.loss(logits, y, reduction="sum").double()
            c, n = self.correct(logits, y)
            correct_sum += c
            count += n
        model.train(was_training)
        loss = (loss_sum / max(count, 1)).item()
        metrics = {"loss": loss, "accuracy": correct_sum.item() / max(count, 1),
                   "examples": float(self.eval_inputs.shape[0])}
        if self.kind == "cognate":
            metrics["perplexity"] = math.exp(min(loss, 50.0))
        return metrics


class ModularArithmeticTask(Task):
    """x * y mod p, exactly the GrokFast paper's multiplication task.

    The split permutation comes from ``generator`` when given (the paper's order: the stream
    that initialised the model), else from a generator seeded by ``seed``. Examples are in
    ``cartesian_prod`` order (x major) before the permutation, as in the reference.
    """

    kind = "modular_arithmetic"
    sequence_length = 4

    def __init__(self, modulus: int = 97, train_fraction: float = 0.5, seed: int = 0,
                 generator: torch.Generator | None = None) -> None:
        p = modulus
        self.modulus = p
        self.eq_token = p
        self.op_token = p + 1
        self.vocab_size = p + 2
        x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
        eq = torch.full_like(x, self.eq_token)
        op = torch.full_like(x, self.op_token)
        inputs = torch.stack([x, op, y, eq], dim=1)
        targets = (x * y) % p
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        perm = torch.randperm(inputs.shape[0], generator=gen)
        n_train = int(inputs.shape[0] * train_fraction)
        train_idx, eval_idx = perm[:n_train], perm[n_train:]
        self.train_inputs, self.train_targets = inputs[train_idx], targets[train_idx]
        self.eval_inputs, self.eval_targets = inputs[eval_idx], targets[eval_idx]
        self.eval_batch_size = 8192

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits[:, -1, :], targets, reduction=reduction)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (logits[:, -1, :].argmax(-1) == targets).sum(), int(targets.shape[0])


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus BOS (256), EOS (257) and PAD (258)."""

    BOS = 256
    EOS = 257
    PAD = 258
    vocab_size = 259
    kind = "byte"

    def record(self) -> dict[str, str]:
        return {"kind": self.kind}

    def encode(self, text: str, *, bos: bool = True, eos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.BOS] if bos else []) + ids + ([self.EOS] if eos else [])

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CharTokenizer:
    """The characters of a text: ids ``0 .. n-1`` are ``vocabulary[i]`` (the distinct
    characters, in code point order), then BOS (``n``), EOS (``n + 1``) and PAD (``n + 2``);
    ``vocab_size`` is ``n + 3``. At most :data:`MAX_CHARACTERS` characters (the model
    registry records the vocabulary as one version parameter, at most 1,024 characters).

    The contract's ``TOKENIZER_CHAR``: "the characters seen in the training text plus
    BOS, EOS and PAD" (agentforge.training.v1.Tokenizer). A model trained with it reads
    ids only this vocabulary gives meaning to, so whoever feeds it text needs the
    vocabulary it was trained with: checkpoints and registered versions carry it.
    """

    MAX_CHARACTERS = 1024
    kind = "char"

    def __init__(self, vocabulary: str) -> None:
        if not vocabulary:
            raise SpecError("task.dataset", "the dataset has no characters to build a vocabulary from")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("a character vocabulary lists each character once")
        if len(vocabulary) > self.MAX_CHARACTERS:
            raise SpecError("task.tokenizer",
                            f"the dataset has {len(vocabulary)} distinct characters; TOKENIZER_CHAR allows at most "
                            f"{self.MAX_CHARACTERS} (use TOKENIZER_BYTE)")
        self.vocabulary = vocabulary
        self._ids = {c: i for i, c in enumerate(vocabulary)}
        n = len(vocabulary)
        self.BOS, self.EOS, self.PAD = n, n + 1, n + 2
        self.vocab_size = n + 3

    @classmethod
    def from_documents(cls, docs: list[str]) -> "CharTokenizer":
        """The vocabulary of every character in ``docs``, in code point order."""
        return cls("".join(sorted(set().union(*map(set, docs)))))

    def encode(self, text: str, *, bos: bool = True, eos: bool = True, skip_unknown: bool = False) -> list[int]:
        """Ids of ``text``. A character outside the vocabulary is a SpecError, or with
        ``skip_unknown`` left out (scoring a model on text it was not trained on)."""
        ids: list[int] = [self.BOS] if bos else []
        for c in text:
            i = self._ids.get(c)
            if i is None:
                if skip_unknown:
                    continue
                raise SpecError("task.dataset", f"character {c!r} is not in the tokenizer's vocabulary")
            ids.append(i)
        if eos:
            ids.append(self.EOS)
        return ids

    def decode(self, ids: list[int]) -> str:
        n = len(self.vocabulary)
        return "".join(self.vocabulary[i] for i in ids if 0 <= i < n)

    def record(self) -> dict[str, str]:
        """What checkpoints store to rebuild it: ``{"kind": "char", "vocabulary": ...}``."""
        return {"kind": self.kind, "vocabulary": self.vocabulary}


_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun",
          "Kofi", "Lena", "Mia", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq")
_ITEMS = ("apples", "pencils", "marbles", "stickers", "books", "coins", "cards", "shells",
          "eggs", "flowers", "cookies", "stamps")


def generate_word_problems(count: int, seed: int) -> list[str]:
    """``count`` arithmetic word problems with their answers, deterministic from ``seed``."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(count):
        name, other = rng.sample(_NAMES, 2)
        item = rng.choice(_ITEMS)
        form = rng.randrange(4)
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if form == 0:
            out.append(f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have? {a + b}")
        elif form == 1:
            a, b = max(a, b), min(a, b)
            out.append(f"{name} has {a} {item} and gives away {b}. How many {item} are left? {a - b}")
        elif form == 2:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            out.append(f"{name} has {a} bags with {b} {item} in each. How many {item} in total? {a * b}")
        else:
            out.append(f"{name} has {a} {item}. {other} has {b} more than {name}. "
                       f"How many {item} does {other} have? {a + b}")
    return out


def iter_text_documents(path: str | Path) -> Iterator[str]:
    """Documents of a local file, one at a time: ``.jsonl`` -> each line's ``text``;
    ``.txt`` -> non-empty lines (stripped). SpecError ``task.dataset`` for a missing file
    or a malformed ``.jsonl`` line; UnicodeDecodeError for bytes that are not UTF-8."""
    p = Path(path)
    if not p.is_file():
        raise SpecError("task.dataset", f"dataset file not found: {p}")
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if p.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SpecError("task.dataset", f"{p}:{lineno}: invalid JSON ({exc.msg})") from exc
                text = record.get("text") if isinstance(record, dict) else None
                if not isinstance(text, str):
                    raise SpecError("task.dataset", f"{p}:{lineno}: missing string field 'text'")
                yield text
            else:
                yield line


def load_text_documents(path: str | Path) -> list[str]:
    """Documents of a local file: ``.jsonl`` -> each line's ``text``; ``.txt`` -> non-empty lines."""
    docs = list(iter_text_documents(path))
    if not docs:
        raise SpecError("task.dataset", f"dataset file has no text: {Path(path)}")
    return docs


@dataclass(frozen=True)
class DatasetProfile:
    """What create-time checks need of a dataset, without tokenizing it
    (:func:`dataset_profile`).

    ``characters``: its distinct characters, in code point order (a ``char``
    tokenizer's vocabulary). ``char_lengths`` / ``byte_lengths``: each document's length
    in characters / UTF-8 bytes, in file order. ``complete``: whether that is the whole
    dataset (False: a prefix of whole documents, read up to a bound).
    """

    characters: str
    complete: bool
    char_lengths: array
    byte_lengths: array

    def token_lengths(self, tokenizer: str) -> array:
        """Each document's tokens as :class:`CognateTask` encodes it with ``tokenizer``
        (``"byte"``: UTF-8 bytes, ``"char"``: characters; each plus BOS and EOS)."""
        lengths = self.byte_lengths if tokenizer == "byte" else self.char_lengths
        return array("Q", (n + 2 for n in lengths))


def dataset_profile(dataset: str, seed: int = 0, *, max_chars: int | None = None) -> DatasetProfile:
    """Read a dataset as :class:`CognateTask` reads it: ``dataset`` is
    :data:`BUILTIN_DATASET` (its word problems for ``seed``) or a ``.txt``/``.jsonl``
    path, read document by document as :func:`load_text_documents` reads it.

    ``max_chars``: stop after whole documents totalling at least this many characters
    (``complete`` is then False unless nothing followed). Raises SpecError
    ``task.dataset`` as :func:`load_text_documents` does (missing, malformed or empty
    file; no characters at all) and UnicodeDecodeError for a file that is not UTF-8.
    """
    if dataset == BUILTIN_DATASET:
        docs: Iterable[str] = generate_word_problems(CognateTask.builtin_documents, seed)
    else:
        docs = iter_text_documents(dataset)
    seen: set[str] = set()
    chars, nbytes = array("Q"), array("Q")
    read = 0
    complete = True
    it = iter(docs)
    for doc in it:
        seen.update(doc)
        chars.append(len(doc))
        nbytes.append(len(doc.encode("utf-8")))
        read += len(doc)
        if max_chars is not None and read >= max_chars:
            complete = next(it, None) is None
            break
    if not chars:
        raise SpecError("task.dataset", f"dataset file has no text: {dataset}")
    if not seen:
        raise SpecError("task.dataset", "the dataset has no characters to build a vocabulary from")
    return DatasetProfile("".join(sorted(seen)), complete, chars, nbytes)


def split_documents(count: int, train_fraction: float, seed: int) -> tuple[list[int], int]:
    """:class:`CognateTask`'s split of ``count`` documents: their order (shuffled by
    ``random.Random(seed)``) and how many of it train; the rest validate. One document
    (``count`` 1) is split by token position instead (see :func:`split_token_counts`)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_train = min(max(1, round(count * train_fraction)), count - 1) if count >= 2 else count
    return order, n_train


def split_token_counts(token_lengths: Sequence[int], train_fraction: float, seed: int) -> tuple[int, int]:
    """Tokens in :class:`CognateTask`'s training and validation splits, given each
    document's tokens in file order: ``(train, validation)``. Each split needs at least
    ``context_length + 1`` tokens for one window."""
    if len(token_lengths) >= 2:
        order, n_train = split_documents(len(token_lengths), train_fraction, seed)
        train = sum(token_lengths[i] for i in order[:n_train])
        return train, sum(token_lengths) - train
    total = sum(token_lengths)
    cut = int(total * train_fraction)
    return cut, total - cut


class CognateTask(Task):
    """Next-token prediction in non-overlapping windows of ``context_length``.

    ``tokenizer``: ``"byte"`` (UTF-8 bytes), ``"char"`` (a :class:`CharTokenizer` of the
    dataset's characters, all of its documents), or a tokenizer to use as it is (a
    trained model's :class:`CharTokenizer`: characters it lacks are left out of the text).
    """

    kind = "cognate"
    builtin_documents = 4000
    max_eval_windows = 256

    def __init__(self, dataset: str, context_length: int, train_fraction: float = 0.9,
                 seed: int = 0, tokenizer: "str | ByteTokenizer | CharTokenizer" = "byte") -> None:
        self.sequence_length = context_length
        if dataset == BUILTIN_DATASET:
            docs = generate_word_problems(self.builtin_documents, seed)
        else:
            docs = load_text_documents(dataset)
        self._skip_unknown = False
        if tokenizer == "byte":
            self.tokenizer: ByteTokenizer | CharTokenizer = ByteTokenizer()
        elif tokenizer == "char":
            self.tokenizer = CharTokenizer.from_documents(docs)
        elif isinstance(tokenizer, (ByteTokenizer, CharTokenizer)):
            self.tokenizer = tokenizer
            self._skip_unknown = isinstance(tokenizer, CharTokenizer)
        else:
            raise SpecError("task.tokenizer", f"unknown tokenizer {tokenizer!r}; expected byte or char")
        self.vocab_size = self.tokenizer.vocab_size
        order, n_train = split_documents(len(docs), train_fraction, seed)
        docs = [docs[i] for i in order]
        if len(docs) >= 2:
            train_ids = self._stream(docs[:n_train])
            eval_ids = self._stream(docs[n_train:])
        else:  # one document: split its token stream by position
            ids = self._stream(docs)
            cut = int(len(ids) * train_fraction)
            train_ids, eval_ids = ids[:cut], ids[cut:]
        self.train_inputs, self.train_targets = self._windows(train_ids, context_length, "training")
        self.eval_inputs, self.eval_targets = self._windows(eval_ids, context_length, "validation")
        self.eval_inputs = self.eval_inputs[: self.max_eval_windows]
        self.eval_targets = self.eval_targets[: self.max_eval_windows]
        self.eval_batch_size = 64

    def _stream(self, docs: list[str]) -> list[int]:
        ids: list[int] = []
        for d in docs:
            if self._skip_unknown:
                ids.extend(self.tokenizer.encode(d, skip_unknown=True))  # type: ignore[call-arg]
            else:
                ids.extend(self.tokenizer.encode(d))
        return ids

    @staticmethod
    def _windows(ids: list[int], t: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = (len(ids) - 1) // t
        if n < 1:
            raise SpecError("task.dataset", f"{split} split has {len(ids)} tokens; "
                            f"need at least context_length + 1 = {t + 1}")
        data = torch.tensor(ids[: n * t + 1], dtype=torch.long)
        inputs = data[:-1].view(n, t)
        targets = data[1:].view(n, t)
        return inputs.contiguous(), targets.contiguous()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction=reduction)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        return (logits.argmax(-1) == targets).sum(), int(targets.numel())


def build_task(spec: TaskSpec, context_length: int, seed: int,
               generator: torch.Generator | None = None) -> Task:
    """The task a spec names (CPU tensors; call :meth:`Task.to` to move it).

    ``generator``: for ``modular_arithmetic``, the stream the split is drawn from (the
    ``paper`` data order); ``None`` = a generator seeded by ``seed``.
    """
    if spec.kind == "modular_arithmetic":
        return ModularArithmeticTask(spec.modulus, spec.train_fraction, seed, generator)
    if spec.kind == "cognate":
        return CognateTask(spec.dataset, context_length, spec.train_fraction, seed, tokenizer=spec.tokenizer)
    raise SpecError("task.kind", f"unknown task {spec.kind!r}")
