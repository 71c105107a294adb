import datetime

from agentforge.common.v1 import common_pb2 as _common_pb2
from agentforge.forge.v1 import phase_run_pb2 as _phase_run_pb2
from agentforge.model.v1 import model_version_pb2 as _model_version_pb2
from agentforge.monitoring.v1 import alert_pb2 as _alert_pb2
from agentforge.monitoring.v1 import health_pb2 as _health_pb2
from agentforge.training.v1 import training_job_pb2 as _training_job_pb2
from agentforge.training.v1 import training_job_event_pb2 as _training_job_event_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("id", "type", "source", "time", "trace_context", "subject", "sequence", "training_job_event", "training_job_completed", "model_version_created", "alias_moved", "alert_raised", "alert_resolved", "health_changed", "phase_run_state_changed", "training_job_queued")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_EVENT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_CREATED_FIELD_NUMBER: _ClassVar[int]
    ALIAS_MOVED_FIELD_NUMBER: _ClassVar[int]
    ALERT_RAISED_FIELD_NUMBER: _ClassVar[int]
    ALERT_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PHASE_RUN_STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_QUEUED_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    source: str
    time: _timestamp_pb2.Timestamp
    trace_context: _common_pb2.TraceContext
    subject: str
    sequence: int
    training_job_event: _training_job_event_pb2.TrainingJobEvent
    training_job_completed: TrainingJobCompleted
    model_version_created: ModelVersionCreated
    alias_moved: AliasMoved
    alert_raised: AlertRaised
    alert_resolved: AlertResolved
    health_changed: HealthChanged
    phase_run_state_changed: PhaseRunStateChanged
    training_job_queued: TrainingJobQueued
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., source: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_context: _Optional[_Union[_common_pb2.TraceContext, _Mapping]] = ..., subject: _Optional[str] = ..., sequence: _Optional[int] = ..., training_job_event: _Optional[_Union[_training_job_event_pb2.TrainingJobEvent, _Mapping]] = ..., training_job_completed: _Optional[_Union[TrainingJobCompleted, _Mapping]] = ..., model_version_created: _Optional[_Union[ModelVersionCreated, _Mapping]] = ..., alias_moved: _Optional[_Union[AliasMoved, _Mapping]] = ..., alert_raised: _Optional[_Union[AlertRaised, _Mapping]] = ..., alert_resolved: _Optional[_Union[AlertResolved, _Mapping]] = ..., health_changed: _Optional[_Union[HealthChanged, _Mapping]] = ..., phase_run_state_changed: _Optional[_Union[PhaseRunStateChanged, _Mapping]] = ..., training_job_queued: _Optional[_Union[TrainingJobQueued, _Mapping]] = ...) -> None: ...

class TrainingJobCompleted(_message.Message):
    __slots__ = ("training_job", "checkpoint")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    training_job: _training_job_pb2.TrainingJob
    checkpoint: _training_job_pb2.Checkpoint
    def __init__(self, training_job: _Optional[_Union[_training_job_pb2.TrainingJob, _Mapping]] = ..., checkpoint: _Optional[_Union[_training_job_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class TrainingJobQueued(_message.Message):
    __slots__ = ("training_job", "priority", "attempt")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    training_job: str
    priority: _training_job_pb2.Priority
    attempt: int
    def __init__(self, training_job: _Optional[str] = ..., priority: _Optional[_Union[_training_job_pb2.Priority, str]] = ..., attempt: _Optional[int] = ...) -> None: ...

class ModelVersionCreated(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: _model_version_pb2.ModelVersion
    def __init__(self, model_version: _Optional[_Union[_model_version_pb2.ModelVersion, _Mapping]] = ...) -> None: ...

class AliasMoved(_message.Message):
    __slots__ = ("model", "alias", "from_version", "to_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    alias: str
    from_version: str
    to_version: str
    def __init__(self, model: _Optional[str] = ..., alias: _Optional[str] = ..., from_version: _Optional[str] = ..., to_version: _Optional[str] = ...) -> None: ...

class AlertRaised(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: _alert_pb2.Alert
    def __init__(self, alert: _Optional[_Union[_alert_pb2.Alert, _Mapping]] = ...) -> None: ...

class AlertResolved(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: _alert_pb2.Alert
    def __init__(self, alert: _Optional[_Union[_alert_pb2.Alert, _Mapping]] = ...) -> None: ...

class HealthChanged(_message.Message):
    __slots__ = ("component", "previous_status")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATUS_FIELD_NUMBER: _ClassVar[int]
    component: _health_pb2.ComponentHealth
    previous_status: _health_pb2.HealthStatus
    def __init__(self, component: _Optional[_Union[_health_pb2.ComponentHealth, _Mapping]] = ..., previous_status: _Optional[_Union[_health_pb2.HealthStatus, str]] = ...) -> None: ...

class PhaseRunStateChanged(_message.Message):
    __slots__ = ("phase_run", "previous_state")
    PHASE_RUN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    phase_run: _phase_run_pb2.PhaseRun
    previous_state: _phase_run_pb2.PhaseRunState
    def __init__(self, phase_run: _Optional[_Union[_phase_run_pb2.PhaseRun, _Mapping]] = ..., previous_state: _Optional[_Union[_phase_run_pb2.PhaseRunState, str]] = ...) -> None: ...
