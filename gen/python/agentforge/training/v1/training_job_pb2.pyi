import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingJobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_JOB_STATE_UNSPECIFIED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_QUEUED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_RUNNING: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_PAUSED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_SUCCEEDED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_FAILED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_CANCELLED: _ClassVar[TrainingJobState]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_MODULAR_ARITHMETIC: _ClassVar[TaskKind]
    TASK_KIND_COGNATE: _ClassVar[TaskKind]

class BuiltinDataset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILTIN_DATASET_UNSPECIFIED: _ClassVar[BuiltinDataset]
    BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS: _ClassVar[BuiltinDataset]

class Tokenizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKENIZER_UNSPECIFIED: _ClassVar[Tokenizer]
    TOKENIZER_BYTE: _ClassVar[Tokenizer]
    TOKENIZER_CHAR: _ClassVar[Tokenizer]

class OptimizerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_KIND_UNSPECIFIED: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ADAMW: _ClassVar[OptimizerKind]
    OPTIMIZER_KIND_ADAM: _ClassVar[OptimizerKind]

class GrokfastKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROKFAST_KIND_UNSPECIFIED: _ClassVar[GrokfastKind]
    GROKFAST_KIND_NONE: _ClassVar[GrokfastKind]
    GROKFAST_KIND_EMA: _ClassVar[GrokfastKind]
    GROKFAST_KIND_MA: _ClassVar[GrokfastKind]

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_UNSPECIFIED: _ClassVar[Device]
    DEVICE_AUTO: _ClassVar[Device]
    DEVICE_CPU: _ClassVar[Device]
    DEVICE_CUDA: _ClassVar[Device]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]

class CheckpointTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKPOINT_TRIGGER_UNSPECIFIED: _ClassVar[CheckpointTrigger]
    CHECKPOINT_TRIGGER_INTERVAL: _ClassVar[CheckpointTrigger]
    CHECKPOINT_TRIGGER_FINAL: _ClassVar[CheckpointTrigger]
    CHECKPOINT_TRIGGER_REQUESTED: _ClassVar[CheckpointTrigger]
    CHECKPOINT_TRIGGER_PAUSE: _ClassVar[CheckpointTrigger]
TRAINING_JOB_STATE_UNSPECIFIED: TrainingJobState
TRAINING_JOB_STATE_QUEUED: TrainingJobState
TRAINING_JOB_STATE_RUNNING: TrainingJobState
TRAINING_JOB_STATE_PAUSED: TrainingJobState
TRAINING_JOB_STATE_SUCCEEDED: TrainingJobState
TRAINING_JOB_STATE_FAILED: TrainingJobState
TRAINING_JOB_STATE_CANCELLED: TrainingJobState
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_MODULAR_ARITHMETIC: TaskKind
TASK_KIND_COGNATE: TaskKind
BUILTIN_DATASET_UNSPECIFIED: BuiltinDataset
BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS: BuiltinDataset
TOKENIZER_UNSPECIFIED: Tokenizer
TOKENIZER_BYTE: Tokenizer
TOKENIZER_CHAR: Tokenizer
OPTIMIZER_KIND_UNSPECIFIED: OptimizerKind
OPTIMIZER_KIND_ADAMW: OptimizerKind
OPTIMIZER_KIND_ADAM: OptimizerKind
GROKFAST_KIND_UNSPECIFIED: GrokfastKind
GROKFAST_KIND_NONE: GrokfastKind
GROKFAST_KIND_EMA: GrokfastKind
GROKFAST_KIND_MA: GrokfastKind
DEVICE_UNSPECIFIED: Device
DEVICE_AUTO: Device
DEVICE_CPU: Device
DEVICE_CUDA: Device
PRIORITY_UNSPECIFIED: Priority
PRIORITY_LOW: Priority
PRIORITY_NORMAL: Priority
PRIORITY_HIGH: Priority
CHECKPOINT_TRIGGER_UNSPECIFIED: CheckpointTrigger
CHECKPOINT_TRIGGER_INTERVAL: CheckpointTrigger
CHECKPOINT_TRIGGER_FINAL: CheckpointTrigger
CHECKPOINT_TRIGGER_REQUESTED: CheckpointTrigger
CHECKPOINT_TRIGGER_PAUSE: CheckpointTrigger

class TrainingJob(_message.Message):
    __slots__ = ("name", "display_name", "labels", "spec", "phase", "phase_run", "state", "progress", "latest_checkpoint", "error", "attempts", "worker", "final_metrics", "create_time", "start_time", "end_time", "update_time", "request_id", "creator")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASE_RUN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LATEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    labels: _containers.ScalarMap[str, str]
    spec: TrainingJobSpec
    phase: str
    phase_run: str
    state: TrainingJobState
    progress: TrainingProgress
    latest_checkpoint: str
    error: _status_pb2.Status
    attempts: int
    worker: str
    final_metrics: _containers.ScalarMap[str, float]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    request_id: str
    creator: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., spec: _Optional[_Union[TrainingJobSpec, _Mapping]] = ..., phase: _Optional[str] = ..., phase_run: _Optional[str] = ..., state: _Optional[_Union[TrainingJobState, str]] = ..., progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., latest_checkpoint: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., attempts: _Optional[int] = ..., worker: _Optional[str] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., creator: _Optional[str] = ...) -> None: ...

class TrainingJobSpec(_message.Message):
    __slots__ = ("task", "model", "optimizer", "grokfast", "batch_size", "max_steps", "eval_interval", "checkpoint_interval", "progress_interval", "keep_checkpoints", "seed", "device", "priority")
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    GROKFAST_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    EVAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    task: TaskSpec
    model: ModelArchitecture
    optimizer: OptimizerSpec
    grokfast: GrokfastSpec
    batch_size: int
    max_steps: int
    eval_interval: int
    checkpoint_interval: int
    progress_interval: int
    keep_checkpoints: int
    seed: int
    device: Device
    priority: Priority
    def __init__(self, task: _Optional[_Union[TaskSpec, _Mapping]] = ..., model: _Optional[_Union[ModelArchitecture, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., grokfast: _Optional[_Union[GrokfastSpec, _Mapping]] = ..., batch_size: _Optional[int] = ..., max_steps: _Optional[int] = ..., eval_interval: _Optional[int] = ..., checkpoint_interval: _Optional[int] = ..., progress_interval: _Optional[int] = ..., keep_checkpoints: _Optional[int] = ..., seed: _Optional[int] = ..., device: _Optional[_Union[Device, str]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("kind", "dataset", "modulus", "train_fraction")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MODULUS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FRACTION_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    dataset: DatasetSpec
    modulus: int
    train_fraction: float
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., dataset: _Optional[_Union[DatasetSpec, _Mapping]] = ..., modulus: _Optional[int] = ..., train_fraction: _Optional[float] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("builtin", "path", "tokenizer")
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    builtin: BuiltinDataset
    path: str
    tokenizer: Tokenizer
    def __init__(self, builtin: _Optional[_Union[BuiltinDataset, str]] = ..., path: _Optional[str] = ..., tokenizer: _Optional[_Union[Tokenizer, str]] = ...) -> None: ...

class ModelArchitecture(_message.Message):
    __slots__ = ("layers", "width", "heads", "context_length", "vocab_size", "dropout")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    layers: int
    width: int
    heads: int
    context_length: int
    vocab_size: int
    dropout: float
    def __init__(self, layers: _Optional[int] = ..., width: _Optional[int] = ..., heads: _Optional[int] = ..., context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dropout: _Optional[float] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("kind", "learning_rate", "beta1", "beta2", "weight_decay", "warmup_steps")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    kind: OptimizerKind
    learning_rate: float
    beta1: float
    beta2: float
    weight_decay: float
    warmup_steps: int
    def __init__(self, kind: _Optional[_Union[OptimizerKind, str]] = ..., learning_rate: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., weight_decay: _Optional[float] = ..., warmup_steps: _Optional[int] = ...) -> None: ...

class GrokfastSpec(_message.Message):
    __slots__ = ("kind", "alpha", "lamb", "window", "warmup")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    LAMB_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    kind: GrokfastKind
    alpha: float
    lamb: float
    window: int
    warmup: bool
    def __init__(self, kind: _Optional[_Union[GrokfastKind, str]] = ..., alpha: _Optional[float] = ..., lamb: _Optional[float] = ..., window: _Optional[int] = ..., warmup: _Optional[bool] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("step", "total_steps", "fraction_done", "train_loss", "train_accuracy", "learning_rate", "steps_per_second", "examples_per_second", "eta_seconds", "grokfast", "eval", "train_val_gap")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_DONE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GROKFAST_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    TRAIN_VAL_GAP_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    fraction_done: float
    train_loss: float
    train_accuracy: float
    learning_rate: float
    steps_per_second: float
    examples_per_second: float
    eta_seconds: float
    grokfast: GrokfastStats
    eval: EvalMetrics
    train_val_gap: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., fraction_done: _Optional[float] = ..., train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., learning_rate: _Optional[float] = ..., steps_per_second: _Optional[float] = ..., examples_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., grokfast: _Optional[_Union[GrokfastStats, _Mapping]] = ..., eval: _Optional[_Union[EvalMetrics, _Mapping]] = ..., train_val_gap: _Optional[float] = ...) -> None: ...

class GrokfastStats(_message.Message):
    __slots__ = ("slow_gradient_norm", "amplification_ratio", "alpha", "lamb", "kind", "window", "window_filled")
    SLOW_GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    AMPLIFICATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    LAMB_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FILLED_FIELD_NUMBER: _ClassVar[int]
    slow_gradient_norm: float
    amplification_ratio: float
    alpha: float
    lamb: float
    kind: GrokfastKind
    window: int
    window_filled: int
    def __init__(self, slow_gradient_norm: _Optional[float] = ..., amplification_ratio: _Optional[float] = ..., alpha: _Optional[float] = ..., lamb: _Optional[float] = ..., kind: _Optional[_Union[GrokfastKind, str]] = ..., window: _Optional[int] = ..., window_filled: _Optional[int] = ...) -> None: ...

class EvalMetrics(_message.Message):
    __slots__ = ("step", "loss", "accuracy", "perplexity")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PERPLEXITY_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    accuracy: float
    perplexity: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., perplexity: _Optional[float] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("name", "step", "size_bytes", "sha256", "metrics", "final", "trigger", "uri", "create_time")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    step: int
    size_bytes: int
    sha256: str
    metrics: _containers.ScalarMap[str, float]
    final: bool
    trigger: CheckpointTrigger
    uri: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., step: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., final: _Optional[bool] = ..., trigger: _Optional[_Union[CheckpointTrigger, str]] = ..., uri: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingJobMetrics(_message.Message):
    __slots__ = ("name", "progress", "evals", "progress_count", "eval_count", "cursor", "sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EVALS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    progress: _containers.RepeatedCompositeFieldContainer[TrainingProgress]
    evals: _containers.RepeatedCompositeFieldContainer[EvalMetrics]
    progress_count: int
    eval_count: int
    cursor: str
    sequence: int
    def __init__(self, name: _Optional[str] = ..., progress: _Optional[_Iterable[_Union[TrainingProgress, _Mapping]]] = ..., evals: _Optional[_Iterable[_Union[EvalMetrics, _Mapping]]] = ..., progress_count: _Optional[int] = ..., eval_count: _Optional[int] = ..., cursor: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...
