import datetime

from agentforge.common.v1 import common_pb2 as _common_pb2
from agentforge.training.v1 import training_job_pb2 as _training_job_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_SEVERITY_UNSPECIFIED: _ClassVar[LogSeverity]
    LOG_SEVERITY_DEBUG: _ClassVar[LogSeverity]
    LOG_SEVERITY_INFO: _ClassVar[LogSeverity]
    LOG_SEVERITY_WARNING: _ClassVar[LogSeverity]
    LOG_SEVERITY_ERROR: _ClassVar[LogSeverity]
LOG_SEVERITY_UNSPECIFIED: LogSeverity
LOG_SEVERITY_DEBUG: LogSeverity
LOG_SEVERITY_INFO: LogSeverity
LOG_SEVERITY_WARNING: LogSeverity
LOG_SEVERITY_ERROR: LogSeverity

class TrainingJobEvent(_message.Message):
    __slots__ = ("training_job", "sequence", "cursor", "epoch", "time", "progress", "state_changed", "checkpoint_written", "eval_completed", "log", "control_applied", "stream_end", "heartbeat")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    EVAL_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    CONTROL_APPLIED_FIELD_NUMBER: _ClassVar[int]
    STREAM_END_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    training_job: str
    sequence: int
    cursor: str
    epoch: str
    time: _timestamp_pb2.Timestamp
    progress: _training_job_pb2.TrainingProgress
    state_changed: StateChanged
    checkpoint_written: _training_job_pb2.Checkpoint
    eval_completed: _training_job_pb2.EvalMetrics
    log: LogLine
    control_applied: ControlApplied
    stream_end: _status_pb2.Status
    heartbeat: _common_pb2.StreamHeartbeat
    def __init__(self, training_job: _Optional[str] = ..., sequence: _Optional[int] = ..., cursor: _Optional[str] = ..., epoch: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_training_job_pb2.TrainingProgress, _Mapping]] = ..., state_changed: _Optional[_Union[StateChanged, _Mapping]] = ..., checkpoint_written: _Optional[_Union[_training_job_pb2.Checkpoint, _Mapping]] = ..., eval_completed: _Optional[_Union[_training_job_pb2.EvalMetrics, _Mapping]] = ..., log: _Optional[_Union[LogLine, _Mapping]] = ..., control_applied: _Optional[_Union[ControlApplied, _Mapping]] = ..., stream_end: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., heartbeat: _Optional[_Union[_common_pb2.StreamHeartbeat, _Mapping]] = ...) -> None: ...

class StateChanged(_message.Message):
    __slots__ = ("from_state", "to_state", "reason", "error", "worker")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    from_state: _training_job_pb2.TrainingJobState
    to_state: _training_job_pb2.TrainingJobState
    reason: str
    error: _status_pb2.Status
    worker: str
    def __init__(self, from_state: _Optional[_Union[_training_job_pb2.TrainingJobState, str]] = ..., to_state: _Optional[_Union[_training_job_pb2.TrainingJobState, str]] = ..., reason: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., worker: _Optional[str] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("severity", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: LogSeverity
    message: str
    def __init__(self, severity: _Optional[_Union[LogSeverity, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ControlApplied(_message.Message):
    __slots__ = ("step", "learning_rate", "grokfast_alpha", "grokfast_lamb", "checkpoint_requested")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GROKFAST_ALPHA_FIELD_NUMBER: _ClassVar[int]
    GROKFAST_LAMB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    step: int
    learning_rate: float
    grokfast_alpha: float
    grokfast_lamb: float
    checkpoint_requested: bool
    def __init__(self, step: _Optional[int] = ..., learning_rate: _Optional[float] = ..., grokfast_alpha: _Optional[float] = ..., grokfast_lamb: _Optional[float] = ..., checkpoint_requested: _Optional[bool] = ...) -> None: ...
