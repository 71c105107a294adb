import datetime

from agentforge.realtime.v1 import message_pb2 as _message_pb2
from agentforge.realtime.v1 import topic_pb2 as _topic_pb2
from buf.validate import validate_pb2 as _validate_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("topics", "topic_patterns", "cursor", "from_beginning", "heartbeat_interval")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FROM_BEGINNING_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    topic_patterns: _containers.RepeatedScalarFieldContainer[str]
    cursor: str
    from_beginning: bool
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., topic_patterns: _Optional[_Iterable[str]] = ..., cursor: _Optional[str] = ..., from_beginning: _Optional[bool] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("message", "heartbeat", "history_lost", "stream_end")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LOST_FIELD_NUMBER: _ClassVar[int]
    STREAM_END_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    heartbeat: _message_pb2.Heartbeat
    history_lost: _message_pb2.HistoryLost
    stream_end: _status_pb2.Status
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ..., heartbeat: _Optional[_Union[_message_pb2.Heartbeat, _Mapping]] = ..., history_lost: _Optional[_Union[_message_pb2.HistoryLost, _Mapping]] = ..., stream_end: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "payload", "data", "request_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    payload: _any_pb2.Any
    data: _struct_pb2.Struct
    request_id: str
    def __init__(self, topic: _Optional[str] = ..., payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("topic", "cursor", "sequence", "epoch", "publish_time")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    topic: str
    cursor: str
    sequence: int
    epoch: str
    publish_time: _timestamp_pb2.Timestamp
    def __init__(self, topic: _Optional[str] = ..., cursor: _Optional[str] = ..., sequence: _Optional[int] = ..., epoch: _Optional[str] = ..., publish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTopicsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "topic_pattern")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_PATTERN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    topic_pattern: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., topic_pattern: _Optional[str] = ...) -> None: ...

class ListTopicsResponse(_message.Message):
    __slots__ = ("topics", "next_page_token")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedCompositeFieldContainer[_topic_pb2.Topic]
    next_page_token: str
    def __init__(self, topics: _Optional[_Iterable[_Union[_topic_pb2.Topic, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTopicRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
