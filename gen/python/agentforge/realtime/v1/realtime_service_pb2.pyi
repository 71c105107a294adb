from agentforge.common.v1 import access_pb2 as _access_pb2
from agentforge.realtime.v1 import request_response_pb2 as _request_response_pb2
from agentforge.realtime.v1 import topic_pb2 as _topic_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
