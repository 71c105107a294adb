from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_VIEWER: _ClassVar[Role]
    ROLE_TRAINER: _ClassVar[Role]
    ROLE_OPERATOR: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_VIEWER: Role
ROLE_TRAINER: Role
ROLE_OPERATOR: Role
ROLE_ADMIN: Role
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor

class MethodAccess(_message.Message):
    __slots__ = ("role", "mutating", "owner_scoped")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MUTATING_FIELD_NUMBER: _ClassVar[int]
    OWNER_SCOPED_FIELD_NUMBER: _ClassVar[int]
    role: Role
    mutating: bool
    owner_scoped: bool
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., mutating: _Optional[bool] = ..., owner_scoped: _Optional[bool] = ...) -> None: ...
