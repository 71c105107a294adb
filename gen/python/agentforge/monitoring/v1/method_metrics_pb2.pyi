import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RpcType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RPC_TYPE_UNSPECIFIED: _ClassVar[RpcType]
    RPC_TYPE_UNARY: _ClassVar[RpcType]
    RPC_TYPE_CLIENT_STREAMING: _ClassVar[RpcType]
    RPC_TYPE_SERVER_STREAMING: _ClassVar[RpcType]
    RPC_TYPE_BIDI_STREAMING: _ClassVar[RpcType]
RPC_TYPE_UNSPECIFIED: RpcType
RPC_TYPE_UNARY: RpcType
RPC_TYPE_CLIENT_STREAMING: RpcType
RPC_TYPE_SERVER_STREAMING: RpcType
RPC_TYPE_BIDI_STREAMING: RpcType

class MethodMetrics(_message.Message):
    __slots__ = ("name", "service", "method", "rpc_type", "requests_total", "errors_total", "errors_by_code", "latency_p50", "latency_p90", "latency_p99", "qps", "error_rate", "in_flight", "window")
    class ErrorsByCodeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RPC_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_BY_CODE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P90_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_FIELD_NUMBER: _ClassVar[int]
    QPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    method: str
    rpc_type: RpcType
    requests_total: int
    errors_total: int
    errors_by_code: _containers.ScalarMap[str, int]
    latency_p50: _duration_pb2.Duration
    latency_p90: _duration_pb2.Duration
    latency_p99: _duration_pb2.Duration
    qps: float
    error_rate: float
    in_flight: int
    window: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., method: _Optional[str] = ..., rpc_type: _Optional[_Union[RpcType, str]] = ..., requests_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., errors_by_code: _Optional[_Mapping[str, int]] = ..., latency_p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_p90: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., qps: _Optional[float] = ..., error_rate: _Optional[float] = ..., in_flight: _Optional[int] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
