import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PhaseRunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_RUN_STATE_UNSPECIFIED: _ClassVar[PhaseRunState]
    PHASE_RUN_STATE_PENDING: _ClassVar[PhaseRunState]
    PHASE_RUN_STATE_RUNNING: _ClassVar[PhaseRunState]
    PHASE_RUN_STATE_COMPENSATING: _ClassVar[PhaseRunState]
    PHASE_RUN_STATE_SUCCEEDED: _ClassVar[PhaseRunState]
    PHASE_RUN_STATE_FAILED: _ClassVar[PhaseRunState]
    PHASE_RUN_STATE_CANCELLED: _ClassVar[PhaseRunState]

class SagaStepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAGA_STEP_STATE_UNSPECIFIED: _ClassVar[SagaStepState]
    SAGA_STEP_STATE_PENDING: _ClassVar[SagaStepState]
    SAGA_STEP_STATE_RUNNING: _ClassVar[SagaStepState]
    SAGA_STEP_STATE_SUCCEEDED: _ClassVar[SagaStepState]
    SAGA_STEP_STATE_FAILED: _ClassVar[SagaStepState]
    SAGA_STEP_STATE_SKIPPED: _ClassVar[SagaStepState]
    SAGA_STEP_STATE_CANCELLED: _ClassVar[SagaStepState]

class CompensationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPENSATION_STATE_UNSPECIFIED: _ClassVar[CompensationState]
    COMPENSATION_STATE_NOT_REQUIRED: _ClassVar[CompensationState]
    COMPENSATION_STATE_PENDING: _ClassVar[CompensationState]
    COMPENSATION_STATE_RUNNING: _ClassVar[CompensationState]
    COMPENSATION_STATE_SUCCEEDED: _ClassVar[CompensationState]
    COMPENSATION_STATE_FAILED: _ClassVar[CompensationState]
PHASE_RUN_STATE_UNSPECIFIED: PhaseRunState
PHASE_RUN_STATE_PENDING: PhaseRunState
PHASE_RUN_STATE_RUNNING: PhaseRunState
PHASE_RUN_STATE_COMPENSATING: PhaseRunState
PHASE_RUN_STATE_SUCCEEDED: PhaseRunState
PHASE_RUN_STATE_FAILED: PhaseRunState
PHASE_RUN_STATE_CANCELLED: PhaseRunState
SAGA_STEP_STATE_UNSPECIFIED: SagaStepState
SAGA_STEP_STATE_PENDING: SagaStepState
SAGA_STEP_STATE_RUNNING: SagaStepState
SAGA_STEP_STATE_SUCCEEDED: SagaStepState
SAGA_STEP_STATE_FAILED: SagaStepState
SAGA_STEP_STATE_SKIPPED: SagaStepState
SAGA_STEP_STATE_CANCELLED: SagaStepState
COMPENSATION_STATE_UNSPECIFIED: CompensationState
COMPENSATION_STATE_NOT_REQUIRED: CompensationState
COMPENSATION_STATE_PENDING: CompensationState
COMPENSATION_STATE_RUNNING: CompensationState
COMPENSATION_STATE_SUCCEEDED: CompensationState
COMPENSATION_STATE_FAILED: CompensationState

class PhaseRun(_message.Message):
    __slots__ = ("name", "phase", "parameters", "input_model_version", "state", "steps", "progress", "outputs", "error", "create_time", "start_time", "end_time", "update_time", "labels", "request_id", "creator")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    INPUT_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    phase: str
    parameters: _struct_pb2.Struct
    input_model_version: str
    state: PhaseRunState
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    progress: PhaseRunProgress
    outputs: PhaseRunOutputs
    error: _status_pb2.Status
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    request_id: str
    creator: str
    def __init__(self, name: _Optional[str] = ..., phase: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., input_model_version: _Optional[str] = ..., state: _Optional[_Union[PhaseRunState, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ..., progress: _Optional[_Union[PhaseRunProgress, _Mapping]] = ..., outputs: _Optional[_Union[PhaseRunOutputs, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ..., creator: _Optional[str] = ...) -> None: ...

class SagaStep(_message.Message):
    __slots__ = ("name", "state", "resource", "start_time", "end_time", "error", "compensation_state", "compensation_error", "attempts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_STATE_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: SagaStepState
    resource: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    error: _status_pb2.Status
    compensation_state: CompensationState
    compensation_error: _status_pb2.Status
    attempts: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[SagaStepState, str]] = ..., resource: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., compensation_state: _Optional[_Union[CompensationState, str]] = ..., compensation_error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class PhaseRunProgress(_message.Message):
    __slots__ = ("fraction_done", "message", "current_step", "steps_done", "steps_total")
    FRACTION_DONE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    fraction_done: float
    message: str
    current_step: str
    steps_done: int
    steps_total: int
    def __init__(self, fraction_done: _Optional[float] = ..., message: _Optional[str] = ..., current_step: _Optional[str] = ..., steps_done: _Optional[int] = ..., steps_total: _Optional[int] = ...) -> None: ...

class PhaseRunOutputs(_message.Message):
    __slots__ = ("model_version", "training_job", "metrics", "artifacts")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ArtifactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    training_job: str
    metrics: _containers.ScalarMap[str, float]
    artifacts: _containers.ScalarMap[str, str]
    def __init__(self, model_version: _Optional[str] = ..., training_job: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., artifacts: _Optional[_Mapping[str, str]] = ...) -> None: ...
