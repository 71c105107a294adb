from agentforge.common.v1 import access_pb2 as _access_pb2
from agentforge.monitoring.v1 import alert_pb2 as _alert_pb2
from agentforge.monitoring.v1 import alert_rule_pb2 as _alert_rule_pb2
from agentforge.monitoring.v1 import health_pb2 as _health_pb2
from agentforge.monitoring.v1 import request_response_pb2 as _request_response_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
