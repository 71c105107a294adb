import datetime

from agentforge.model.v1 import model_version_pb2 as _model_version_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelExportState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_EXPORT_STATE_UNSPECIFIED: _ClassVar[ModelExportState]
    MODEL_EXPORT_STATE_PENDING: _ClassVar[ModelExportState]
    MODEL_EXPORT_STATE_RUNNING: _ClassVar[ModelExportState]
    MODEL_EXPORT_STATE_SUCCEEDED: _ClassVar[ModelExportState]
    MODEL_EXPORT_STATE_FAILED: _ClassVar[ModelExportState]
MODEL_EXPORT_STATE_UNSPECIFIED: ModelExportState
MODEL_EXPORT_STATE_PENDING: ModelExportState
MODEL_EXPORT_STATE_RUNNING: ModelExportState
MODEL_EXPORT_STATE_SUCCEEDED: ModelExportState
MODEL_EXPORT_STATE_FAILED: ModelExportState

class ModelExport(_message.Message):
    __slots__ = ("name", "format", "state", "sha256", "size_bytes", "content_type", "source_sha256", "error", "create_time", "complete_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: _model_version_pb2.ArtifactFormat
    state: ModelExportState
    sha256: str
    size_bytes: int
    content_type: str
    source_sha256: str
    error: _status_pb2.Status
    create_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[_model_version_pb2.ArtifactFormat, str]] = ..., state: _Optional[_Union[ModelExportState, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ..., source_sha256: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
