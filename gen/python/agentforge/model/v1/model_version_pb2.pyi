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

class ModelVersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATE_UNSPECIFIED: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_REGISTERING: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_READY: _ClassVar[ModelVersionState]
    MODEL_VERSION_STATE_FAILED: _ClassVar[ModelVersionState]

class ArtifactState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_STATE_UNSPECIFIED: _ClassVar[ArtifactState]
    ARTIFACT_STATE_PENDING: _ClassVar[ArtifactState]
    ARTIFACT_STATE_UPLOADING: _ClassVar[ArtifactState]
    ARTIFACT_STATE_READY: _ClassVar[ArtifactState]
    ARTIFACT_STATE_FAILED: _ClassVar[ArtifactState]

class ArtifactFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_FORMAT_UNSPECIFIED: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_STATE_DICT: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_SAFETENSORS: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_TORCHSCRIPT: _ClassVar[ArtifactFormat]
    ARTIFACT_FORMAT_ONNX: _ClassVar[ArtifactFormat]
MODEL_VERSION_STATE_UNSPECIFIED: ModelVersionState
MODEL_VERSION_STATE_REGISTERING: ModelVersionState
MODEL_VERSION_STATE_READY: ModelVersionState
MODEL_VERSION_STATE_FAILED: ModelVersionState
ARTIFACT_STATE_UNSPECIFIED: ArtifactState
ARTIFACT_STATE_PENDING: ArtifactState
ARTIFACT_STATE_UPLOADING: ArtifactState
ARTIFACT_STATE_READY: ArtifactState
ARTIFACT_STATE_FAILED: ArtifactState
ARTIFACT_FORMAT_UNSPECIFIED: ArtifactFormat
ARTIFACT_FORMAT_STATE_DICT: ArtifactFormat
ARTIFACT_FORMAT_SAFETENSORS: ArtifactFormat
ARTIFACT_FORMAT_TORCHSCRIPT: ArtifactFormat
ARTIFACT_FORMAT_ONNX: ArtifactFormat

class ModelVersion(_message.Message):
    __slots__ = ("name", "description", "tags", "metrics", "parameters", "lineage", "artifact", "aliases", "state", "create_time", "update_time", "etag", "request_id")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    parameters: _containers.ScalarMap[str, str]
    lineage: Lineage
    artifact: Artifact
    aliases: _containers.RepeatedScalarFieldContainer[str]
    state: ModelVersionState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., parameters: _Optional[_Mapping[str, str]] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[ModelVersionState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("training_job", "checkpoint", "phase_run", "phase", "parent_versions", "merge_method")
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PHASE_RUN_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MERGE_METHOD_FIELD_NUMBER: _ClassVar[int]
    training_job: str
    checkpoint: str
    phase_run: str
    phase: str
    parent_versions: _containers.RepeatedScalarFieldContainer[str]
    merge_method: str
    def __init__(self, training_job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., phase_run: _Optional[str] = ..., phase: _Optional[str] = ..., parent_versions: _Optional[_Iterable[str]] = ..., merge_method: _Optional[str] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("state", "sha256", "size_bytes", "committed_bytes", "content_type", "format", "error", "complete_time")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    state: ArtifactState
    sha256: str
    size_bytes: int
    committed_bytes: int
    content_type: str
    format: ArtifactFormat
    error: _status_pb2.Status
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[ArtifactState, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., committed_bytes: _Optional[int] = ..., content_type: _Optional[str] = ..., format: _Optional[_Union[ArtifactFormat, str]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
