import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HistoryLossReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HISTORY_LOSS_REASON_UNSPECIFIED: _ClassVar[HistoryLossReason]
    HISTORY_LOSS_REASON_EPOCH_CHANGED: _ClassVar[HistoryLossReason]
    HISTORY_LOSS_REASON_RETENTION_EXCEEDED: _ClassVar[HistoryLossReason]
    HISTORY_LOSS_REASON_UNKNOWN_CURSOR: _ClassVar[HistoryLossReason]
HISTORY_LOSS_REASON_UNSPECIFIED: HistoryLossReason
HISTORY_LOSS_REASON_EPOCH_CHANGED: HistoryLossReason
HISTORY_LOSS_REASON_RETENTION_EXCEEDED: HistoryLossReason
HISTORY_LOSS_REASON_UNKNOWN_CURSOR: HistoryLossReason

class Message(_message.Message):
    __slots__ = ("topic", "cursor", "epoch", "sequence", "publish_time", "publisher", "payload", "data")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    topic: str
    cursor: str
    epoch: str
    sequence: int
    publish_time: _timestamp_pb2.Timestamp
    publisher: str
    payload: _any_pb2.Any
    data: _struct_pb2.Struct
    def __init__(self, topic: _Optional[str] = ..., cursor: _Optional[str] = ..., epoch: _Optional[str] = ..., sequence: _Optional[int] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., publisher: _Optional[str] = ..., payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time", "cursor")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    cursor: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cursor: _Optional[str] = ...) -> None: ...

class HistoryLost(_message.Message):
    __slots__ = ("topic", "reason", "previous_epoch", "epoch", "resume_sequence", "cursor")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUME_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    topic: str
    reason: HistoryLossReason
    previous_epoch: str
    epoch: str
    resume_sequence: int
    cursor: str
    def __init__(self, topic: _Optional[str] = ..., reason: _Optional[_Union[HistoryLossReason, str]] = ..., previous_epoch: _Optional[str] = ..., epoch: _Optional[str] = ..., resume_sequence: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...
