"""A tiny service for testing the shared runtime, built from well-known protobuf types.

Importable (the in-process fixtures) and runnable as a process (the signal tests):
``PYTHONPATH=.:gen/python python tests/shared/echo_service.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from agentforge.training.v1 import request_response_pb2
from google.protobuf import empty_pb2, wrappers_pb2

from services.shared import errors
from services.shared.client import make_channel
from services.shared.context import request_id_var
from services.shared.server import run_service

SERVICE = "test.v1.Echo"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class EchoServicer:
    """Handlers for the four RPC kinds plus probes for errors, retries and deadlines."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.validated_calls = 0
        self.validated_messages = 0
        self.port = 0  # set once the server is bound (for CallDownstream)

    async def unary(self, request: wrappers_pb2.StringValue, context: Any) -> wrappers_pb2.StringValue:
        match request.value:
            case "not_found":
                raise errors.NotFound("thing missing", reason="JOB_NOT_FOUND", metadata={"thing": "t1"})
            case "invalid":
                raise errors.InvalidArgument("bad input", [("a.b", "must be set"), ("c[0]", "too long")])
            case "boom":
                raise RuntimeError("secret-token-123")
            case "abort":
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "nope")
        return wrappers_pb2.StringValue(value=request.value)

    async def server_stream(self, request: wrappers_pb2.Int64Value, context: Any) -> AsyncIterator[wrappers_pb2.Int64Value]:
        for i in range(abs(request.value)):
            yield wrappers_pb2.Int64Value(value=i)
        if request.value < 0:
            raise errors.Aborted("stream aborted")

    async def client_stream(self, requests: AsyncIterator[wrappers_pb2.StringValue], context: Any) -> wrappers_pb2.Int64Value:
        count = 0
        async for message in requests:
            if message.value == "boom":
                raise errors.ResourceExhausted("too many")
            count += 1
        return wrappers_pb2.Int64Value(value=count)

    async def bidi(self, requests: AsyncIterator[wrappers_pb2.StringValue], context: Any) -> AsyncIterator[wrappers_pb2.StringValue]:
        async for message in requests:
            if message.value == "boom":
                raise errors.Unavailable("went away")
            yield message

    async def bidi_rw(self, requests: AsyncIterator[wrappers_pb2.StringValue], context: Any) -> None:
        """Bidi handler in the read()/write() style instead of iterators."""
        while (message := await context.read()) is not grpc.aio.EOF:
            await context.write(message)

    async def forever(self, request: empty_pb2.Empty, context: Any) -> AsyncIterator[wrappers_pb2.Int64Value]:
        i = 0
        while True:
            yield wrappers_pb2.Int64Value(value=i)
            i += 1
            await asyncio.sleep(0.05)

    async def flaky(self, request: wrappers_pb2.StringValue, context: Any) -> wrappers_pb2.Int64Value:
        """Fails with UNAVAILABLE on the first two attempts for each key."""
        self.attempts[request.value] += 1
        if self.attempts[request.value] <= 2:
            raise errors.Unavailable("try again")
        return wrappers_pb2.Int64Value(value=self.attempts[request.value])

    async def remaining(self, request: empty_pb2.Empty, context: Any) -> wrappers_pb2.DoubleValue:
        left = context.time_remaining()
        return wrappers_pb2.DoubleValue(value=-1.0 if left is None else left)

    async def call_downstream(self, request: wrappers_pb2.DoubleValue, context: Any) -> wrappers_pb2.DoubleValue:
        """Calls Remaining on itself with its own timeout (0 = none); returns what it saw."""
        async with make_channel(f"127.0.0.1:{self.port}", default_timeout=None) as channel:
            rpc = channel.unary_unary(
                method("Remaining"),
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=wrappers_pb2.DoubleValue.FromString,
            )
            return await rpc(empty_pb2.Empty(), timeout=request.value or None)

    async def request_id(self, request: empty_pb2.Empty, context: Any) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value=request_id_var.get() or "")

    async def validated(self, request: request_response_pb2.GetTrainingJobRequest, context: Any) -> empty_pb2.Empty:
        self.validated_calls += 1
        return empty_pb2.Empty()

    async def validated_stream(self, requests: AsyncIterator[request_response_pb2.ListTrainingJobsRequest], context: Any) -> wrappers_pb2.Int64Value:
        self.validated_calls += 1
        async for _ in requests:
            self.validated_messages += 1
        return wrappers_pb2.Int64Value(value=self.validated_messages)

    def register(self, server: grpc.aio.Server) -> list[str]:
        S, I, D, E = wrappers_pb2.StringValue, wrappers_pb2.Int64Value, wrappers_pb2.DoubleValue, empty_pb2.Empty
        G, L = request_response_pb2.GetTrainingJobRequest, request_response_pb2.ListTrainingJobsRequest

        def h(factory: Any, fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return factory(fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString)

        uu, us = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        su, ss = grpc.stream_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
        handlers = {
            "Unary": h(uu, self.unary, S, S),
            "ServerStream": h(us, self.server_stream, I, I),
            "ClientStream": h(su, self.client_stream, S, I),
            "Bidi": h(ss, self.bidi, S, S),
            "BidiReadWrite": h(ss, self.bidi_rw, S, S),
            "Forever": h(us, self.forever, E, I),
            "Flaky": h(uu, self.flaky, S, I),
            "FlakyNotIdempotent": h(uu, self.flaky, S, I),
            "Remaining": h(uu, self.remaining, E, D),
            "CallDownstream": h(uu, self.call_downstream, D, D),
            "RequestId": h(uu, self.request_id, E, S),
            "Validated": h(uu, self.validated, G, E),
            "ValidatedStream": h(su, self.validated_stream, L, I),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        return [SERVICE]


if __name__ == "__main__":
    run_service("echo", EchoServicer().register)
