from agentforge.forge.v1 import phase_pb2 as _phase_pb2
from agentforge.forge.v1 import phase_run_pb2 as _phase_run_pb2
from buf.validate import validate_pb2 as _validate_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListPhasesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPhasesResponse(_message.Message):
    __slots__ = ("phases", "next_page_token")
    PHASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedCompositeFieldContainer[_phase_pb2.Phase]
    next_page_token: str
    def __init__(self, phases: _Optional[_Iterable[_Union[_phase_pb2.Phase, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPhaseRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartPhaseRunRequest(_message.Message):
    __slots__ = ("phase", "parameters", "phase_run_id", "request_id", "labels", "input_model_version", "phase_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PHASE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PHASE_NAME_FIELD_NUMBER: _ClassVar[int]
    phase: str
    parameters: _struct_pb2.Struct
    phase_run_id: str
    request_id: str
    labels: _containers.ScalarMap[str, str]
    input_model_version: str
    phase_name: str
    def __init__(self, phase: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., phase_run_id: _Optional[str] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., input_model_version: _Optional[str] = ..., phase_name: _Optional[str] = ...) -> None: ...

class GetPhaseRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListPhaseRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "phase", "states", "label_selector")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    phase: str
    states: _containers.RepeatedScalarFieldContainer[_phase_run_pb2.PhaseRunState]
    label_selector: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., phase: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_phase_run_pb2.PhaseRunState, str]]] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListPhaseRunsResponse(_message.Message):
    __slots__ = ("phase_runs", "next_page_token")
    PHASE_RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    phase_runs: _containers.RepeatedCompositeFieldContainer[_phase_run_pb2.PhaseRun]
    next_page_token: str
    def __init__(self, phase_runs: _Optional[_Iterable[_Union[_phase_run_pb2.PhaseRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelPhaseRunRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchPhaseRunRequest(_message.Message):
    __slots__ = ("name", "cursor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    cursor: str
    def __init__(self, name: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...
