"""Build a run's task, model and batch sampler from a spec, in the order the RNG needs.

The order is the GrokFast reference loop's: ``manual_seed(seed)``; initialise the model from
the global torch RNG; then, for ``data_order="paper"``, continue that same stream (a CPU
generator forked from the global state, so later global draws do not disturb it) to draw the
train/validation split and after it one permutation per epoch. With ``data_order="seeded"``
the split and shuffles come from generators seeded by ``seed`` alone.

Everything here is a pure function of the spec, so a resumed run rebuilds the same split and
sampler before loading its checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .model import DecoderTransformer, build_model
from .spec import SpecError, TrainingSpec, required_vocab_size
from .tasks import EpochSampler, Sampler, StreamSampler, Task, build_task

__all__ = ["RunComponents", "build_components"]


@dataclass
class RunComponents:
    """What a training loop needs besides the optimizer (all on CPU)."""

    task: Task
    model: DecoderTransformer
    sampler: Sampler


def build_components(spec: TrainingSpec) -> RunComponents:
    """Seed python/torch with ``spec.seed``, then build model, task and sampler (CPU).

    Leaves the global torch RNG where the model's initialisation left it.
    """
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    vocab = required_vocab_size(spec.task)
    if vocab is None:
        # The char tokenizer's vocabulary is the dataset's characters: read the data
        # first. A cognate task draws nothing from the torch RNG (its split and word
        # problems come from random.Random(seed)), so the model's initialisation below
        # still starts right after manual_seed.
        task = build_task(spec.task, spec.model.context_length, spec.seed)
        vocab = task.vocab_size
        if spec.model.vocab_size and spec.model.vocab_size < vocab:
            raise SpecError("model.vocab_size", f"must be 0 or >= {vocab}: the dataset has {vocab - 3} "
                                                "distinct characters plus BOS, EOS and PAD")
        model = build_model(spec.model, vocab, spec.task.kind)
        sampler = EpochSampler(task.num_train_examples, spec.batch_size, spec.seed)
        return RunComponents(task, model, sampler)
    model = build_model(spec.model, vocab, spec.task.kind)
    if spec.task.resolved_data_order() == "paper":
        stream = torch.Generator().set_state(torch.get_rng_state())
        task = build_task(spec.task, spec.model.context_length, spec.seed, generator=stream)
        sampler: Sampler = StreamSampler(task.num_train_examples, spec.batch_size, stream.get_state())
    else:
        task = build_task(spec.task, spec.model.context_length, spec.seed)
        sampler = EpochSampler(task.num_train_examples, spec.batch_size, spec.seed)
    if task.vocab_size != vocab:
        raise AssertionError(f"task vocabulary {task.vocab_size} != derived {vocab}")
    return RunComponents(task, model, sampler)
