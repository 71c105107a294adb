import datetime

from agentforge.common.v1 import common_pb2 as _common_pb2
from agentforge.forge.v1 import phase_run_pb2 as _phase_run_pb2
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

class PhaseRunEvent(_message.Message):
    __slots__ = ("phase_run", "sequence", "cursor", "epoch", "time", "state_changed", "step_changed", "progress", "log", "stream_end", "heartbeat")
    PHASE_RUN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    STEP_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STREAM_END_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    phase_run: _phase_run_pb2.PhaseRun
    sequence: int
    cursor: str
    epoch: str
    time: _timestamp_pb2.Timestamp
    state_changed: PhaseRunStateChanged
    step_changed: SagaStepChanged
    progress: _phase_run_pb2.PhaseRunProgress
    log: PhaseRunLog
    stream_end: _status_pb2.Status
    heartbeat: _common_pb2.StreamHeartbeat
    def __init__(self, phase_run: _Optional[_Union[_phase_run_pb2.PhaseRun, _Mapping]] = ..., sequence: _Optional[int] = ..., cursor: _Optional[str] = ..., epoch: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed: _Optional[_Union[PhaseRunStateChanged, _Mapping]] = ..., step_changed: _Optional[_Union[SagaStepChanged, _Mapping]] = ..., progress: _Optional[_Union[_phase_run_pb2.PhaseRunProgress, _Mapping]] = ..., log: _Optional[_Union[PhaseRunLog, _Mapping]] = ..., stream_end: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., heartbeat: _Optional[_Union[_common_pb2.StreamHeartbeat, _Mapping]] = ...) -> None: ...

class PhaseRunStateChanged(_message.Message):
    __slots__ = ("from_state", "to_state", "reason", "error")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    from_state: _phase_run_pb2.PhaseRunState
    to_state: _phase_run_pb2.PhaseRunState
    reason: str
    error: _status_pb2.Status
    def __init__(self, from_state: _Optional[_Union[_phase_run_pb2.PhaseRunState, str]] = ..., to_state: _Optional[_Union[_phase_run_pb2.PhaseRunState, str]] = ..., reason: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SagaStepChanged(_message.Message):
    __slots__ = ("step", "index")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    step: _phase_run_pb2.SagaStep
    index: int
    def __init__(self, step: _Optional[_Union[_phase_run_pb2.SagaStep, _Mapping]] = ..., index: _Optional[int] = ...) -> None: ...

class PhaseRunLog(_message.Message):
    __slots__ = ("severity", "message", "step")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    severity: LogSeverity
    message: str
    step: str
    def __init__(self, severity: _Optional[_Union[LogSeverity, str]] = ..., message: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...
