"""Pure-PyTorch training engine for the training service (no grpc/redis imports).

The service layer builds a :class:`TrainingSpec` (``TrainingSpec.from_dict(...)``,
``.validate()`` -> :class:`SpecError` with field violations), then in a worker process runs
``Trainer(spec, run_dir, control, on_event, num_threads=...).run()`` and maps the emitted
event dataclasses and the returned :class:`TrainingOutcome` to protobuf.

Exceptions: :class:`SpecError` (a ``ValueError``) for invalid specs/datasets; anything else
raised by ``Trainer.run`` is a job failure.
"""

from .checkpoint import CheckpointInfo, latest_checkpoint, list_checkpoints, load_checkpoint
from .control import ControlRequests, TrainingControl
from .events import (CheckpointEvent, ControlAppliedEvent, EvalEvent, LogEvent, ProgressEvent,
                     TrainingEvent, TrainingOutcome)
from .grokfast import GrokfastFilter, GrokfastStats
from .model import Block, DecoderTransformer, PaperBlock, build_model
from .setup import RunComponents, build_components
from .spec import (BUILTIN_DATASET, FieldViolation, GrokfastSpec, ModelSpec, OptimizerSpec,
                   SpecError, TaskSpec, TrainingSpec, default_spec)
from .tasks import (ByteTokenizer, CognateTask, EpochSampler, ModularArithmeticTask, Sampler,
                    StreamSampler, Task, build_task, epoch_seed)
from .trainer import Trainer, build_optimizer, resolve_device, warmup_factor

__all__ = [
    "BUILTIN_DATASET", "Block", "ByteTokenizer", "CheckpointEvent", "CheckpointInfo", "CognateTask",
    "ControlAppliedEvent", "ControlRequests", "DecoderTransformer", "EpochSampler", "EvalEvent",
    "FieldViolation", "GrokfastFilter", "GrokfastSpec", "GrokfastStats", "LogEvent", "ModelSpec",
    "ModularArithmeticTask", "OptimizerSpec", "PaperBlock", "ProgressEvent", "RunComponents",
    "Sampler", "SpecError", "StreamSampler", "Task", "TaskSpec",
    "Trainer", "TrainingControl", "TrainingEvent", "TrainingOutcome", "TrainingSpec",
    "build_components", "build_model", "build_optimizer", "build_task", "default_spec", "epoch_seed",
    "latest_checkpoint", "list_checkpoints", "load_checkpoint", "resolve_device", "warmup_factor",
]
