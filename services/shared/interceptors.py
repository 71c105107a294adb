"""grpc.aio server interceptors shared by every service.

Each interceptor wraps the method handler of all four RPC kinds (unary, server
streaming, client streaming, bidi) through :class:`CallInterceptor`, which exposes
three hooks: ``around`` (an async context manager around the whole call),
``on_request`` (each incoming message, also those of a client stream) and
``on_response`` (each outgoing message). Handlers that use ``context.read()`` /
``context.write()`` instead of iterators are observed through a context proxy.

Order used by the server (outermost first)::

    RequestIdInterceptor → LoggingInterceptor → MetricsInterceptor
      → DeadlineInterceptor → ErrorInterceptor → ValidationInterceptor → handler
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import protovalidate
from google.protobuf import message as pb_message

from services.shared.context import (
    REQUEST_ID_KEY,
    deadline_var,
    method_var,
    request_id_var,
)
from services.shared.errors import InvalidArgument, abort_with
from services.shared.metrics import GrpcServerMetrics

__all__ = [
    "CallInfo",
    "CallInterceptor",
    "DeadlineInterceptor",
    "ErrorInterceptor",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "RequestIdInterceptor",
    "ValidationInterceptor",
    "default_interceptors",
    "field_path",
    "outcome_code",
]

_rpc_log = logging.getLogger("services.shared.rpc")
_MAX_REQUEST_ID = 128


@dataclass
class CallInfo:
    """What interceptors know about the RPC being handled."""

    method: str  # "/pkg.Service/Method"
    grpc_type: str  # unary | client_stream | server_stream | bidi_stream
    context: grpc.aio.ServicerContext  # the real context (not a proxy)
    headers_sent: bool = False  # initial metadata already sent by RequestIdInterceptor

    @property
    def service(self) -> str:
        return self.method.lstrip("/").rpartition("/")[0]

    @property
    def method_name(self) -> str:
        return self.method.rpartition("/")[2]


def outcome_code(exc: BaseException | None, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status code the client will see, given how the handler ended."""
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc sends for an unmapped exception


class _ContextProxy:
    """Delegates to the real context but routes ``read``/``write`` through hooks."""

    def __init__(self, ctx: Any, icpt: CallInterceptor, call: CallInfo) -> None:
        self._ctx = ctx
        self._icpt = icpt
        self._call = call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def read(self) -> Any:
        message = await self._ctx.read()
        if message is not grpc.aio.EOF:
            await self._icpt.on_request(self._call, message)
        return message

    async def write(self, message: Any) -> None:
        await self._icpt.on_response(self._call, message)
        await self._ctx.write(message)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Base class: override the hooks; the wrapping of the four kinds is done here."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        yield

    async def on_request(self, call: CallInfo, message: Any) -> None:
        """Called for every incoming message."""

    async def on_response(self, call: CallInfo, message: Any) -> None:
        """Called for every outgoing message, before it is sent."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap_handler(self, handler, handler_call_details.method)


def _wrap_handler(icpt: CallInterceptor, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    serdes = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    async def observe(call: CallInfo, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in requests:
            await icpt.on_request(call, message)
            yield message

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            call = CallInfo(method, "unary", context)
            async with icpt.around(call):
                await icpt.on_request(call, request)
                response = await inner_uu(request, _ContextProxy(context, icpt, call))
                if response is not None:
                    await icpt.on_response(call, response)
                return response

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serdes)

    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            call = CallInfo(method, "client_stream", context)
            async with icpt.around(call):
                response = await inner_su(observe(call, requests), _ContextProxy(context, icpt, call))
                if response is not None:
                    await icpt.on_response(call, response)
                return response

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serdes)

    streaming_in = handler.stream_stream is not None
    inner = handler.stream_stream if streaming_in else handler.unary_stream
    assert inner is not None
    grpc_type = "bidi_stream" if streaming_in else "server_stream"
    make = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler

    async def start(call: CallInfo, request: Any) -> Any:
        if streaming_in:
            return observe(call, request)
        await icpt.on_request(call, request)
        return request

    if inspect.isasyncgenfunction(inner):
        gen_inner = inner

        async def streaming_gen(request: Any, context: Any) -> AsyncIterator[Any]:
            call = CallInfo(method, grpc_type, context)
            async with icpt.around(call):
                arg = await start(call, request)
                async for response in gen_inner(arg, _ContextProxy(context, icpt, call)):
                    await icpt.on_response(call, response)
                    yield response

        return make(streaming_gen, **serdes)

    co_inner = inner

    async def streaming_co(request: Any, context: Any) -> None:
        # Handler writes with context.write(); the proxy observes each message.
        call = CallInfo(method, grpc_type, context)
        async with icpt.around(call):
            arg = await start(call, request)
            await co_inner(arg, _ContextProxy(context, icpt, call))

    return make(streaming_co, **serdes)


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and value.isprintable() and value.isascii()


class RequestIdInterceptor(CallInterceptor):
    """Adopt ``x-request-id`` from the caller or mint one; echo it back.

    The id is echoed in the initial metadata (sent just before the first response
    message, so a failing call stays trailers-only and retryable) and in the
    trailing metadata of every call.
    """

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        incoming = {m.key: m.value for m in (call.context.invocation_metadata() or ())}
        candidate = incoming.get(REQUEST_ID_KEY)
        request_id = candidate if isinstance(candidate, str) and _valid_request_id(candidate) else uuid.uuid4().hex
        request_id_var.set(request_id)
        method_var.set(call.method)
        call.context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        yield

    async def on_response(self, call: CallInfo, message: Any) -> None:
        if call.headers_sent:
            return
        call.headers_sent = True
        request_id = request_id_var.get()
        if request_id is not None:
            with contextlib.suppress(Exception):  # the handler already sent headers
                await call.context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))


class LoggingInterceptor(CallInterceptor):
    """One structured log line per finished RPC (method, code, duration, peer)."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = outcome_code(error, call.context)
            level = logging.ERROR if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                              grpc.StatusCode.DATA_LOSS) else logging.INFO
            _rpc_log.log(
                level,
                "rpc finished",
                extra={
                    "request_id": request_id_var.get(),
                    "method": call.method,
                    "grpc_code": code.name,
                    "grpc_type": call.grpc_type,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    "peer": call.context.peer(),
                },
            )


class MetricsInterceptor(CallInterceptor):
    """go-grpc-prometheus compatible server metrics."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    @staticmethod
    def _labels(call: CallInfo) -> tuple[str, str, str]:
        return (call.grpc_type, call.service, call.method_name)

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        labels = self._labels(call)
        self._metrics.started.labels(*labels).inc()
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = outcome_code(error, call.context)
            self._metrics.handled.labels(*labels, code.name).inc()
            self._metrics.handling_seconds.labels(*labels).observe(time.perf_counter() - start)

    async def on_request(self, call: CallInfo, message: Any) -> None:
        self._metrics.msg_received.labels(*self._labels(call)).inc()

    async def on_response(self, call: CallInfo, message: Any) -> None:
        self._metrics.msg_sent.labels(*self._labels(call)).inc()


class DeadlineInterceptor(CallInterceptor):
    """Record the incoming deadline so downstream calls can use the time left."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        remaining = call.context.time_remaining()
        deadline_var.set(None if remaining is None else time.monotonic() + remaining)
        yield


class ErrorInterceptor(CallInterceptor):
    """Map exceptions escaping a handler to a rich ``google.rpc.Status``."""

    def __init__(self, domain: str) -> None:
        self._domain = domain

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, unknown ones logged in abort_with
            await abort_with(call.context, exc, self._domain)


def field_path(violation: protovalidate.Violation) -> str:
    """Render a violation's field path like ``items[0].name`` / ``labels["k"]``."""
    parts: list[str] = []
    for element in violation.proto.field.elements:
        name = element.field_name or str(element.field_number)
        parts.append(f".{name}" if parts else name)
        sub = element.subscript
        if sub is not None:
            value = sub.value
            if sub.field == "string_key":
                parts.append(f'["{value}"]')
            elif sub.field == "bool_key":
                parts.append(f"[{str(value).lower()}]")
            else:
                parts.append(f"[{value}]")
    return "".join(parts)


class ValidationInterceptor(CallInterceptor):
    """Validate every incoming message with protovalidate (buf.validate rules).

    An invalid message raises :class:`InvalidArgument` with one field violation per
    broken rule, so the handler never sees it; the ErrorInterceptor outside maps it.
    """

    def __init__(self, validator: protovalidate.Validator | None = None) -> None:
        self._validator = validator or protovalidate.Validator()

    async def on_request(self, call: CallInfo, message: Any) -> None:
        if not isinstance(message, pb_message.Message):
            return
        violations = self._validator.collect_violations(message)
        if violations:
            raise InvalidArgument(
                "invalid request: " + "; ".join(
                    f"{field_path(v) or '(message)'}: {v.proto.message}" for v in violations
                ),
                [(field_path(v), v.proto.message) for v in violations],
            )


def default_interceptors(metrics: GrpcServerMetrics | None, domain: str) -> list[grpc.aio.ServerInterceptor]:
    """The standard chain, outermost first (metrics omitted when None)."""
    chain: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor(), LoggingInterceptor()]
    if metrics is not None:
        chain.append(MetricsInterceptor(metrics))
    chain += [DeadlineInterceptor(), ErrorInterceptor(domain), ValidationInterceptor()]
    return chain
