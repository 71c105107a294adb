from agentforge.forge.v1 import phase_run_pb2 as _phase_run_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParameterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAMETER_TYPE_UNSPECIFIED: _ClassVar[ParameterType]
    PARAMETER_TYPE_INTEGER: _ClassVar[ParameterType]
    PARAMETER_TYPE_NUMBER: _ClassVar[ParameterType]
    PARAMETER_TYPE_STRING: _ClassVar[ParameterType]
    PARAMETER_TYPE_BOOLEAN: _ClassVar[ParameterType]
    PARAMETER_TYPE_LIST: _ClassVar[ParameterType]
    PARAMETER_TYPE_OBJECT: _ClassVar[ParameterType]
PARAMETER_TYPE_UNSPECIFIED: ParameterType
PARAMETER_TYPE_INTEGER: ParameterType
PARAMETER_TYPE_NUMBER: ParameterType
PARAMETER_TYPE_STRING: ParameterType
PARAMETER_TYPE_BOOLEAN: ParameterType
PARAMETER_TYPE_LIST: ParameterType
PARAMETER_TYPE_OBJECT: ParameterType

class Phase(_message.Message):
    __slots__ = ("name", "display_name", "description", "prerequisites", "parameters", "outputs", "available", "latest_run", "latest_run_state", "latest_run_progress")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PREREQUISITES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LATEST_RUN_FIELD_NUMBER: _ClassVar[int]
    LATEST_RUN_STATE_FIELD_NUMBER: _ClassVar[int]
    LATEST_RUN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    prerequisites: _containers.RepeatedScalarFieldContainer[str]
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[PhaseOutput]
    available: bool
    latest_run: str
    latest_run_state: _phase_run_pb2.PhaseRunState
    latest_run_progress: _phase_run_pb2.PhaseRunProgress
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., prerequisites: _Optional[_Iterable[str]] = ..., parameters: _Optional[_Iterable[_Union[ParameterSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[PhaseOutput, _Mapping]]] = ..., available: _Optional[bool] = ..., latest_run: _Optional[str] = ..., latest_run_state: _Optional[_Union[_phase_run_pb2.PhaseRunState, str]] = ..., latest_run_progress: _Optional[_Union[_phase_run_pb2.PhaseRunProgress, _Mapping]] = ...) -> None: ...

class ParameterSpec(_message.Message):
    __slots__ = ("name", "type", "description", "default_value", "minimum", "maximum", "required", "allowed_values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParameterType
    description: str
    default_value: _struct_pb2.Value
    minimum: float
    maximum: float
    required: bool
    allowed_values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParameterType, str]] = ..., description: _Optional[str] = ..., default_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., required: _Optional[bool] = ..., allowed_values: _Optional[_Iterable[str]] = ...) -> None: ...

class PhaseOutput(_message.Message):
    __slots__ = ("name", "description", "resource_type", "model_alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    resource_type: str
    model_alias: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., resource_type: _Optional[str] = ..., model_alias: _Optional[str] = ...) -> None: ...
