"""grpc.aio server interceptors shared by every service.

Each interceptor wraps the method handler of all four RPC kinds (unary, server
streaming, client streaming, bidi) through :class:`CallInterceptor`, which exposes
three hooks: ``around`` (an async context manager around the whole call),
``on_request`` (each incoming message, also those of a client stream) and
``on_response`` (each outgoing message). Handlers that use ``context.read()`` /
``context.write()`` instead of iterators are observed through a context proxy.

:class:`StreamEndInterceptor` is the one that adds messages: it ends every server
stream whose response message has a ``google.rpc.Status stream_end`` field with a last
message carrying the call's final status (REST clients cannot read trailers), and ends
open streams with UNAVAILABLE as soon as the server's stop event is set.

Order used by the server (outermost first)::

    TracingInterceptor → RequestIdInterceptor → LoggingInterceptor → MetricsInterceptor
      → AuthInterceptor → DeadlineInterceptor → ErrorInterceptor → StreamEndInterceptor
      → DecodeInterceptor → ValidationInterceptor → IdempotencyInterceptor → handler

:class:`DecodeInterceptor` swaps every method's request deserializer for one that
never raises: grpc would otherwise fail the call with UNKNOWN (and a traceback) before
any interceptor runs. The undecodable message is turned into INVALID_ARGUMENT inside
the chain, so it is logged, counted and answered like any other bad request.

AuthInterceptor (:mod:`services.shared.authz`) refuses a call before anything else
runs; refusals are still logged and counted by the three outside it.

Servers get the chain as one :class:`RuntimeInterceptor` (:func:`default_interceptors`):
it composes the chain once per method instead of on every call (grpc.aio runs each
interceptor's ``intercept_service`` per call), and handles unary-unary calls with one
function that does the hooks' work in the same order, from a per-method plan (metric
series, access rule, validator): the generic hooks cost more than the work they did
(benchmarks/edge_unary.py, docs/benchmarks.md). Streams go through the composed chain.
A change to a hook's behaviour for unary calls goes in ``_fused_unary`` too.

StreamEnd sits inside ErrorInterceptor, so the status it puts in ``stream_end`` and the
status ErrorInterceptor gives the call come from the same exception; and outside
ValidationInterceptor, so an invalid message mid-stream (bidi) also ends with a
``stream_end``. Everything outside it sees the extra message like any other (metrics
count it, the request id goes out with the first message).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import protovalidate
from google.protobuf import descriptor_pool, message_factory
from google.protobuf import message as pb_message
from google.rpc import code_pb2, status_pb2

from services.shared.context import (
    REQUEST_ID_KEY,
    deadline_var,
    method_var,
    request_id_var,
    stream_expiry_var,
    stream_revoked_var,
)
from services.shared.errors import (
    DOMAIN,
    ForgeError,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    abort_with,
    as_domain_error,
    clip,
    internal_status,
    to_rpc_status,
)
from services.shared.metrics import GrpcServerMetrics
from services.shared.tracing import enabled as tracing_enabled
from services.shared.tracing import TRACEPARENT, TRACESTATE, end_rpc_span, open_server_span, start_server_span

__all__ = [
    "CallInfo",
    "CallInterceptor",
    "ChainInterceptor",
    "DeadlineInterceptor",
    "DecodeInterceptor",
    "ErrorInterceptor",
    "LoggingInterceptor",
    "MetricsInterceptor",
    "RequestIdInterceptor",
    "RuntimeInterceptor",
    "SHUTDOWN_MESSAGE",
    "STREAM_END_FIELD",
    "StopEvent",
    "StreamEndInterceptor",
    "TracingInterceptor",
    "ValidationInterceptor",
    "default_interceptors",
    "field_path",
    "outcome_code",
]

_rpc_log = logging.getLogger("services.shared.rpc")
_random_bits = random.getrandbits
_log = logging.getLogger(__name__)
_MAX_REQUEST_ID = 128

#: The response field that carries a stream's final status (see the contracts).
STREAM_END_FIELD = "stream_end"
#: The keepalive field of watch streams' responses (``agentforge.common.v1.StreamHeartbeat``).
HEARTBEAT_FIELD = "heartbeat"
_HEARTBEAT_TYPE = "agentforge.common.v1.StreamHeartbeat"
#: Message of the UNAVAILABLE status that ends open streams when the server stops.
SHUTDOWN_MESSAGE = "server shutting down"
UNIMPLEMENTED_MESSAGE = "method not implemented"
#: How much of a map key a field path quotes.
MAX_KEY_CHARS = 64


def _domain_error(exc: BaseException) -> BaseException:
    """``NotImplementedError`` (generated base servicers) → UNIMPLEMENTED; a dependency
    that is away → UNAVAILABLE (:func:`~services.shared.errors.as_domain_error`); others as is."""
    if isinstance(exc, NotImplementedError):
        return Unimplemented(UNIMPLEMENTED_MESSAGE)
    return as_domain_error(exc)


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


_NO_AROUND = contextlib.nullcontext()


def _wrap_handler(icpt: CallInterceptor, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    serdes = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    # Hooks the interceptor leaves as the base class's no-ops cost nothing per call or
    # message: no context manager, no await, no context proxy when neither message hook
    # is there (streams pay these per message, for every interceptor of the chain).
    kind = type(icpt)
    hooks_requests = kind.on_request is not CallInterceptor.on_request
    hooks_responses = kind.on_response is not CallInterceptor.on_response
    if kind.around is CallInterceptor.around and not (hooks_requests or hooks_responses):
        return handler

    def around(call: CallInfo) -> contextlib.AbstractAsyncContextManager[Any]:
        return icpt.around(call) if kind.around is not CallInterceptor.around else _NO_AROUND

    def context_for(context: Any, call: CallInfo) -> Any:
        return _ContextProxy(context, icpt, call) if hooks_requests or hooks_responses else context

    async def observe(call: CallInfo, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for message in requests:
            await icpt.on_request(call, message)
            yield message

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            call = CallInfo(method, "unary", context)
            async with around(call):
                if hooks_requests:
                    await icpt.on_request(call, request)
                response = await inner_uu(request, context_for(context, call))
                if response is not None and hooks_responses:
                    await icpt.on_response(call, response)
                return response

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serdes)

    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            call = CallInfo(method, "client_stream", context)
            async with around(call):
                response = await inner_su(observe(call, requests) if hooks_requests else requests,
                                          context_for(context, call))
                if response is not None and hooks_responses:
                    await icpt.on_response(call, response)
                return response

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serdes)

    streaming_in = handler.stream_stream is not None
    inner = handler.stream_stream if streaming_in else handler.unary_stream
    assert inner is not None
    grpc_type = "bidi_stream" if streaming_in else "server_stream"
    make = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler

    async def start(call: CallInfo, request: Any) -> Any:
        if not hooks_requests:
            return request
        if streaming_in:
            return observe(call, request)
        await icpt.on_request(call, request)
        return request

    if inspect.isasyncgenfunction(inner):
        gen_inner = inner

        async def streaming_gen(request: Any, context: Any) -> AsyncIterator[Any]:
            call = CallInfo(method, grpc_type, context)
            async with around(call):
                arg = await start(call, request)
                async for response in gen_inner(arg, context_for(context, call)):
                    if hooks_responses:
                        await icpt.on_response(call, response)
                    yield response

        return make(streaming_gen, **serdes)

    co_inner = inner

    async def streaming_co(request: Any, context: Any) -> None:
        # Handler writes with context.write(); the proxy observes each message.
        call = CallInfo(method, grpc_type, context)
        async with around(call):
            arg = await start(call, request)
            await co_inner(arg, context_for(context, call))

    return make(streaming_co, **serdes)


class TracingInterceptor(CallInterceptor):
    """One OpenTelemetry SERVER span per call, parent from the ``traceparent`` metadata
    (:mod:`services.shared.tracing`; nothing when tracing is off).

    For unary calls :class:`RuntimeInterceptor` does the same in its fused handler
    (:func:`services.shared.tracing.open_server_span` / ``end_rpc_span``).

    Our own and not the contrib ``opentelemetry-instrumentation-grpc`` aio server
    interceptor: that one iterates every streaming handler's result, so a handler that
    writes with ``context.write()`` (our coroutine streams) fails with UNKNOWN
    ("'async for' requires an object with __aiter__ method, got coroutine").
    """

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        span = start_server_span(call.method, call.context.invocation_metadata())
        if span is None:
            yield
            return
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            end_rpc_span(span, outcome_code(error, call.context), server=True, error=error)


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and value.isprintable() and value.isascii()


def _mint_request_id() -> str:
    """32 hex digits of 128 random bits, as long as ``uuid4().hex``.

    A request id names a call in logs and traces; it is no secret, so it comes from
    :mod:`random` (reseeded in forked children) rather than ``os.urandom``, whose system
    call per RPC showed in the profile.
    """
    return f"{_random_bits(128):032x}"


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
        request_id = candidate if isinstance(candidate, str) and _valid_request_id(candidate) else _mint_request_id()
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
        # Read the peer now: context.peer() reads the core call, which a stopped server
        # may already have freed by the time a cancelled handler finishes (segfault).
        peer = call.context.peer()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            log_finished(call.method, call.grpc_type, outcome_code(error, call.context), start, peer,
                         request_id_var.get())


_ERROR_CODES = frozenset((grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS))


def log_finished(method: str, grpc_type: str, code: grpc.StatusCode, start: float, peer: str,
                 request_id: str | None) -> None:
    """The one ``rpc finished`` line of a call (ERROR for INTERNAL/UNKNOWN/DATA_LOSS, else INFO).

    ``start`` is the call's ``time.perf_counter()`` at its start. The record is made and
    handled directly: ``Logger.log`` would also walk the stack for the caller's file and
    line, which no formatter here prints, on every RPC.
    """
    level = logging.ERROR if code in _ERROR_CODES else logging.INFO
    if not _rpc_log.isEnabledFor(level):
        return
    record = _rpc_log.makeRecord(
        _rpc_log.name, level, __file__, 0, "rpc finished", (), None, "log_finished",
        {
            "request_id": request_id,
            "method": method,
            "grpc_code": code.name,
            "grpc_type": grpc_type,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            "peer": peer,
        },
    )
    _rpc_log.handle(record)


class MetricsInterceptor(CallInterceptor):
    """go-grpc-prometheus compatible server metrics."""

    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, str], MethodMetrics] = {}

    def for_method(self, grpc_type: str, method: str) -> MethodMetrics:
        """The labelled children of one method's series (made once, then reused)."""
        key = (grpc_type, method)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = MethodMetrics(self._metrics, grpc_type, method)
        return found

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        series = self.for_method(call.grpc_type, call.method)
        series.started.inc()
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            series.handled(outcome_code(error, call.context)).inc()
            series.handling_seconds.observe(time.perf_counter() - start)

    async def on_request(self, call: CallInfo, message: Any) -> None:
        self.for_method(call.grpc_type, call.method).msg_received.inc()

    async def on_response(self, call: CallInfo, message: Any) -> None:
        self.for_method(call.grpc_type, call.method).msg_sent.inc()


class MethodMetrics:
    """One method's children of the five server metrics (labels resolved once)."""

    __slots__ = ("_handled", "_handled_by_code", "handling_seconds", "msg_received", "msg_sent", "started")

    def __init__(self, metrics: GrpcServerMetrics, grpc_type: str, method: str) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        labels = (grpc_type, service, name)
        self.started = metrics.started.labels(*labels)
        self.handling_seconds = metrics.handling_seconds.labels(*labels)
        self.msg_received = metrics.msg_received.labels(*labels)
        self.msg_sent = metrics.msg_sent.labels(*labels)
        self._handled = (metrics.handled, labels)
        self._handled_by_code: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._handled_by_code.get(code)
        if child is None:
            parent, labels = self._handled
            child = self._handled_by_code[code] = parent.labels(*labels, code.name)
        return child


class DeadlineInterceptor(CallInterceptor):
    """Record the incoming deadline so downstream calls can use the time left."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        remaining = call.context.time_remaining()
        deadline_var.set(None if remaining is None else time.monotonic() + remaining)
        yield


class ErrorInterceptor(CallInterceptor):
    """Map exceptions escaping a handler to a rich ``google.rpc.Status``."""

    def __init__(self, domain: str = DOMAIN) -> None:
        self._domain = domain

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, unknown ones logged in abort_with
            # A generated base servicer sets UNIMPLEMENTED and raises NotImplementedError.
            await abort_with(call.context, _domain_error(exc), self._domain)


class StopEvent(asyncio.Event):
    """The server's stop event: an :class:`asyncio.Event` whose ``set()`` first runs
    the callbacks added with :meth:`add_set_callback`, synchronously, in order.

    ``build_server`` creates one as ``Service.stop_requested``; handlers use it like
    any event (``await stop.wait()``), the stream interceptor through callbacks.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def add_set_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_set_callback(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def set(self) -> None:
        if not self.is_set():
            for callback in list(self._callbacks):
                try:
                    callback()
                except Exception:  # noqa: BLE001 - one bad callback must not stop the rest
                    _log.exception("stop callback failed")
        super().set()


_NEXT_DONE = object()  # sentinel: the handler's iterator is exhausted


async def _next_message(responses: AsyncIterator[Any]) -> Any:
    try:
        return await responses.__anext__()
    except StopAsyncIteration:
        return _NEXT_DONE


class _CountingContext:
    """Delegates to the call's context and counts ``write()`` calls."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self.written = 0
        self.last_write = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def write(self, message: Any) -> None:
        await self._ctx.write(message)
        self.written += 1
        self.last_write = time.monotonic()


class _Stopping(Exception):
    """Internal: the server's stop event fired while the stream was open."""


class _Quiet(Exception):
    """Internal: the handler sent nothing for ``max_quiet_s``."""


class _Expired(Exception):
    """Internal: the caller's token expired while the stream was open."""


class _Revoked(Exception):
    """Internal: the caller's token was revoked while the stream was open."""


TOKEN_REVOKED_MESSAGE = "the token was revoked; get a new one (and reconnect with the last cursor)"


async def _until_revoked(revoked: asyncio.Event | None) -> None:
    if revoked is None:
        await asyncio.Future()  # never
    else:
        await revoked.wait()


def _time_left(expiry: float | None) -> float | None:
    """Seconds until ``expiry`` (wall clock), None without one."""
    return None if expiry is None else max(0.0, expiry - time.time())


TOKEN_EXPIRED_MESSAGE = "the token expired; reconnect with a fresh one (and the last cursor)"


def _earliest(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional timeouts (None = none)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _expired(expiry: float | None) -> bool:
    return expiry is not None and time.time() >= expiry


class StreamEndInterceptor(grpc.aio.ServerInterceptor):
    """End server (and bidi) streams with their final status as a last message.

    Applies to RPCs whose response message (looked up by method name in the default
    descriptor pool) has a ``google.rpc.Status stream_end`` field; all other RPCs pass
    through untouched. For those streams:

    * the handler's iterator ends → one more message with ``stream_end`` = OK;
    * the handler raises → a last message with ``stream_end`` = the status the
      ErrorInterceptor will give the call (code, message, ErrorInfo/BadRequest), then
      the exception goes on to it, so the call's status is the same;
    * the server's ``stop`` event fires → the handler is cancelled and closed, a last
      message with ``stream_end`` = UNAVAILABLE "server shutting down", and the call
      ends with the same status (``errors.Unavailable``), without waiting for the grace
      period to run out;
    * the response also has a ``heartbeat`` field of type
      ``agentforge.common.v1.StreamHeartbeat`` (``WatchTrainingJob``, ``WatchPhaseRun``,
      ``WatchAlerts``) and the handler sent nothing for ``heartbeat_s`` seconds → a
      message with only ``heartbeat`` set (the server time) is sent, also before the
      handler's first message, and the handler goes on undisturbed. A quiet watch thus
      stays open through every proxy idle timeout above ``heartbeat_s`` (Envoy's
      streaming idle timeout, 900 s) and never meets ``max_quiet_s``. Handlers in the
      ``context.write()`` style get none (the interceptor cannot write between them).
    * the handler sends nothing for ``max_quiet_s`` seconds → likewise, with
      UNAVAILABLE "no message for N s; call again with the last cursor". A watch of
      something quiet without heartbeats thus ends with a status the client retries,
      before the edge's streaming idle timeout would reset it with none (gRPC clients
      would read that reset as INTERNAL). None or 0: no limit.
    * the caller's token expires (:data:`~services.shared.context.stream_expiry_var`,
      set by the auth interceptor) → likewise, with UNAUTHENTICATED (reason
      ``TOKEN_EXPIRED``): a stream never outlives the credentials that opened it;
      likewise when they are revoked (:data:`~services.shared.context.stream_revoked_var`,
      reason ``TOKEN_REVOKED``).

    An error before the first message sends no ``stream_end``: the call stays
    trailers-only (REST clients get the mapped HTTP status and a ``google.rpc.Status``
    body; Envoy may retry an UNAVAILABLE). A client that went away (cancellation,
    deadline) gets nothing more, and neither does a handler that called
    ``context.abort()`` (its status is already sent): raise a ``ForgeError`` instead.
    """

    def __init__(
        self,
        domain: str = DOMAIN,
        stop: asyncio.Event | None = None,
        pool: descriptor_pool.DescriptorPool | None = None,
        max_quiet_s: float | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        self._domain = domain
        self._stop = stop
        self._max_quiet = max_quiet_s or None
        self._heartbeat = heartbeat_s or None
        self._pool = pool or descriptor_pool.Default()
        self._classes: dict[str, type[pb_message.Message] | None] = {}

    @staticmethod
    def has_heartbeat(end_class: type[pb_message.Message]) -> bool:
        """True when ``end_class`` has a ``heartbeat`` field of type ``StreamHeartbeat``."""
        field = end_class.DESCRIPTOR.fields_by_name.get(HEARTBEAT_FIELD)
        return field is not None and field.message_type is not None and field.message_type.full_name == _HEARTBEAT_TYPE

    def stream_end_class(self, method: str) -> type[pb_message.Message] | None:
        """The response class of ``/pkg.Service/Method`` if it has ``stream_end``."""
        if method not in self._classes:
            self._classes[method] = self._resolve(method)
        return self._classes[method]

    def _resolve(self, method: str) -> type[pb_message.Message] | None:
        service, _, name = method.lstrip("/").rpartition("/")
        try:
            service_desc = self._pool.FindServiceByName(service)
        except KeyError:
            # The pb2_grpc module does not import the service's own file; the house
            # layout puts `FooService` in `<package>/foo_service.proto`.
            service_desc = self._import_service(service)
            if service_desc is None:
                return None
        method_desc = service_desc.methods_by_name.get(name)
        if method_desc is None:
            return None
        output = method_desc.output_type
        field = output.fields_by_name.get(STREAM_END_FIELD)
        if field is None or field.message_type is None or field.message_type.full_name != status_pb2.Status.DESCRIPTOR.full_name:
            return None
        return message_factory.GetMessageClass(output)

    def _import_service(self, service: str) -> Any:
        package, _, short = service.rpartition(".")
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in short).lstrip("_")
        with contextlib.suppress(ImportError, ValueError):
            __import__(f"{package}.{snake}_pb2")
        with contextlib.suppress(KeyError):
            return self._pool.FindServiceByName(service)
        _log.debug("no descriptor for %s; its streams get no stream_end", service)
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not (handler.unary_stream or handler.stream_stream):
            return handler
        end_class = self.stream_end_class(handler_call_details.method)
        if end_class is None:
            return handler
        return self._wrap(handler, end_class)

    # --- the wrapped handlers -----------------------------------------------------------

    def _end_message(self, end_class: type[pb_message.Message], status: status_pb2.Status) -> Any:
        message = end_class()
        getattr(message, STREAM_END_FIELD).CopyFrom(status)
        return message

    @staticmethod
    def _heartbeat_message(end_class: type[pb_message.Message]) -> Any:
        message = end_class()
        getattr(message, HEARTBEAT_FIELD).time.GetCurrentTime()
        return message

    def _status_for(self, exc: BaseException) -> status_pb2.Status:
        mapped = _domain_error(exc)
        if isinstance(mapped, ForgeError):
            return to_rpc_status(mapped, self._domain)
        return internal_status(self._domain)  # ErrorInterceptor logs the exception

    def _stopping_error(self) -> Unavailable:
        return Unavailable(SHUTDOWN_MESSAGE, reason="SERVER_SHUTTING_DOWN")

    def _quiet_error(self) -> Unavailable:
        return Unavailable(f"no message for {self._max_quiet:g} s; call again with the last cursor to resume",
                           reason="UNAVAILABLE")
    @staticmethod
    def _expired_error() -> Unauthenticated:
        return Unauthenticated(TOKEN_EXPIRED_MESSAGE, reason="TOKEN_EXPIRED")

    @staticmethod
    def _revoked_error() -> Unauthenticated:
        return Unauthenticated(TOKEN_REVOKED_MESSAGE, reason="TOKEN_REVOKED")

    @contextlib.contextmanager
    def _on_stop(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` when the stop event is set, while the block runs.

        With a :class:`StopEvent` the callback runs synchronously inside ``set()``,
        before any task woken by the event runs: cancelling the handler there means a
        handler that also watches the event never gets to act on it first.
        """
        stop = self._stop
        if stop is None:
            yield
            return
        if isinstance(stop, StopEvent):
            stop.add_set_callback(callback)
            try:
                yield
            finally:
                stop.remove_set_callback(callback)
            return
        watcher = asyncio.ensure_future(stop.wait())
        watcher.add_done_callback(lambda w: None if w.cancelled() else callback())
        try:
            yield
        finally:
            watcher.cancel()

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    @staticmethod
    async def _cancel(task: asyncio.Future[Any] | None) -> None:
        """Stop ``task`` and wait for it. Its outcome is decided elsewhere: an exception
        it ended with (e.g. ``ExecuteBatchError`` from writing to a client that just went
        away) is marked retrieved, so asyncio does not log "Task exception was never
        retrieved" for every stream cancelled mid-write."""
        if task is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()

    @staticmethod
    async def _close(responses: AsyncIterator[Any]) -> None:
        aclose = getattr(responses, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - the stream's outcome is already decided
            _log.warning("stream handler failed while closing", exc_info=True)

    def _wrap(self, handler: grpc.RpcMethodHandler, end_class: type[pb_message.Message]) -> grpc.RpcMethodHandler:
        serdes = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        inner = handler.stream_stream or handler.unary_stream
        make = grpc.stream_stream_rpc_method_handler if handler.stream_stream else grpc.unary_stream_rpc_method_handler
        if inspect.isasyncgenfunction(inner):
            return make(self._gen_wrapper(inner, end_class), **serdes)
        return make(self._co_wrapper(inner, end_class), **serdes)

    def _gen_wrapper(self, inner: Any, end_class: type[pb_message.Message]) -> Any:
        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            # Each step of the handler runs in its own task, so that stopping can cancel
            # the handler alone; all steps share one context, so contextvars behave as
            # in a single task.
            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            expiry = stream_expiry_var.get()
            revoked = stream_revoked_var.get()
            revocation = loop.create_task(_until_revoked(revoked)) if revoked is not None else None
            responses = inner(request, context)
            pending: asyncio.Task[Any] | None = None
            stopping = False
            sent = 0
            failure: BaseException | None = None
            heartbeat = self._heartbeat if self.has_heartbeat(end_class) else None
            last_sent = time.monotonic()

            def on_stop() -> None:
                nonlocal stopping
                stopping = True
                if pending is not None:
                    pending.cancel()

            try:
                with self._on_stop(on_stop):
                    while True:
                        if self._stopped():
                            raise _Stopping
                        if pending is None:
                            pending = loop.create_task(_next_message(responses), context=ctx)
                        now = time.monotonic()
                        # Wake for the next heartbeat (the handler's pending step goes on)
                        # or for the quiet limit, whichever comes first.
                        idle = _earliest(heartbeat, self._max_quiet)
                        idle_left = None if idle is None else max(0.0, last_sent + idle - now)
                        waits = (pending,) if revocation is None else (pending, revocation)
                        done, _ = await asyncio.wait(waits, timeout=_earliest(idle_left, _time_left(expiry)),
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if revoked is not None and revoked.is_set():
                            raise _Revoked
                        if not done:
                            if _expired(expiry):
                                raise _Expired
                            quiet_for = time.monotonic() - last_sent
                            if heartbeat is not None and quiet_for >= heartbeat:
                                yield self._heartbeat_message(end_class)
                                sent += 1
                                last_sent = time.monotonic()
                            elif self._max_quiet is not None and quiet_for >= self._max_quiet:
                                raise _Quiet
                            continue
                        task, pending = pending, None
                        if stopping and (task.cancelled() or not isinstance(task.exception(), grpc.aio.AbortError)):
                            raise _Stopping
                        message = task.result()  # the handler's exception, if any
                        if message is _NEXT_DONE:
                            break
                        yield message
                        sent += 1
                        last_sent = time.monotonic()
            except _Stopping:
                failure = self._stopping_error()
            except _Quiet:
                failure = self._quiet_error()
            except _Expired:
                failure = self._expired_error()
            except _Revoked:
                failure = self._revoked_error()
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised below for ErrorInterceptor
                failure = exc
            finally:
                # Also when the client went away (CancelledError) or the caller closed
                # this generator: stop the handler and let its finally blocks run.
                await self._cancel(revocation)
                await self._cancel(pending)
                await self._close(responses)
            if failure is None:
                yield self._end_message(end_class, status_pb2.Status(code=code_pb2.OK))
                return
            if sent and not context.cancelled():
                yield self._end_message(end_class, self._status_for(failure))
            raise failure

        return stream

    def _co_wrapper(self, inner: Any, end_class: type[pb_message.Message]) -> Any:
        async def run(request: Any, context: _CountingContext) -> None:
            result = inner(request, context)
            if inspect.isawaitable(result):
                await result

        async def stream(request: Any, context: Any) -> None:
            # Handler in the read()/write() style: run it as a task that stopping cancels.
            counting = _CountingContext(context)
            loop = asyncio.get_running_loop()
            failure: BaseException | None = None
            work: asyncio.Task[None] | None = None
            revocation: asyncio.Task[None] | None = None
            stopping = False

            def on_stop() -> None:
                nonlocal stopping
                stopping = True
                if work is not None:
                    work.cancel()

            try:
                with self._on_stop(on_stop):
                    if self._stopped():
                        raise _Stopping
                    work = loop.create_task(run(request, counting), context=contextvars.copy_context())
                    expiry = stream_expiry_var.get()
                    revoked = stream_revoked_var.get()
                    if revoked is not None:
                        revocation = loop.create_task(_until_revoked(revoked))
                    while True:
                        timeout = None
                        if self._max_quiet is not None:
                            timeout = max(0.0, counting.last_write + self._max_quiet - time.monotonic())
                        waits = (work,) if revocation is None else (work, revocation)
                        done, _ = await asyncio.wait(waits, timeout=_earliest(timeout, _time_left(expiry)),
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if revoked is not None and revoked.is_set():
                            raise _Revoked
                        if work in done:
                            break
                        if _expired(expiry):
                            raise _Expired
                        if self._max_quiet is not None and time.monotonic() - counting.last_write >= self._max_quiet:
                            raise _Quiet
                    if stopping and (work.cancelled() or not isinstance(work.exception(), grpc.aio.AbortError)):
                        raise _Stopping
                    work.result()
            except _Stopping:
                failure = self._stopping_error()
            except _Quiet:
                failure = self._quiet_error()
            except _Expired:
                failure = self._expired_error()
            except _Revoked:
                failure = self._revoked_error()
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - re-raised below for ErrorInterceptor
                failure = exc
            finally:
                await self._cancel(revocation)
                await self._cancel(work)
            if failure is None:
                await context.write(self._end_message(end_class, status_pb2.Status(code=code_pb2.OK)))
                return
            if counting.written and not context.cancelled():
                await context.write(self._end_message(end_class, self._status_for(failure)))
            raise failure

        return stream


def field_path(violation: protovalidate.Violation) -> str:
    """Render a violation's field path like ``items[0].name`` / ``labels["k"]``.

    A message-level rule of the request itself (a CEL rule on the request message) has
    no field: the path is empty, meaning the request as a whole. Map keys are quoted
    up to :data:`MAX_KEY_CHARS` characters (a path echoes the client's input).
    """
    parts: list[str] = []
    field = violation.proto.field
    if field is None:
        return ""
    for element in field.elements:
        name = element.field_name or str(element.field_number)
        parts.append(f".{name}" if parts else name)
        sub = element.subscript
        if sub is not None:
            value = sub.value
            if sub.field == "string_key":
                parts.append(f'["{clip(str(value), MAX_KEY_CHARS)}"]')
            elif sub.field == "bool_key":
                parts.append(f"[{str(value).lower()}]")
            else:
                parts.append(f"[{value}]")
    return "".join(parts)


class Undecodable:
    """What the lenient deserializer returns for bytes that are not a valid message."""

    __slots__ = ("error", "field", "size")

    def __init__(self, error: str, size: int, field: str = "") -> None:
        self.error = error
        self.size = size
        self.field = field


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def bad_utf8_field(descriptor: Any, data: bytes, prefix: str = "", depth: int = 0) -> str:
    """The path of the first ``string`` field in ``data`` that is not UTF-8, or "".

    A small walk over the protobuf wire format (the runtime's error does not say which
    field), so an undecodable request can name its field like any other violation.
    """
    pos = 0
    try:
        while pos < len(data) and depth < 32:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
                continue
            if wire != 2:
                return ""
            length, pos = _varint(data, pos)
            chunk = data[pos:pos + length]
            pos += length
            field = descriptor.fields_by_number.get(number)
            if field is None:
                continue
            path = f"{prefix}.{field.name}" if prefix else field.name
            if field.type == field.TYPE_STRING:
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError:
                    return path
            elif field.message_type is not None:
                found = bad_utf8_field(field.message_type, chunk, path, depth + 1)
                if found:
                    return found
    except (ValueError, IndexError):
        return ""
    return ""


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, or whatever a custom one raises
            field = bad_utf8_field(descriptor, data) if descriptor is not None and "UTF-8" in str(exc) else ""
            return Undecodable(str(exc), len(data), field)

    return deserialize


def _decode_error_text(error: str) -> str:
    # upb: "Error parsing message with type 'pkg.Msg': String field had bad UTF-8"
    detail = error.rpartition("': ")[2] if "': " in error else error
    return detail.strip() or "malformed message"


class DecodeInterceptor(CallInterceptor):
    """Undecodable request bytes → INVALID_ARGUMENT, inside the interceptor chain.

    grpc deserializes a request before any interceptor's code runs, and a
    deserializer that raises ends the call with UNKNOWN ("Exception deserializing
    request!") and a logged traceback, unseen by metrics and logging. This interceptor
    replaces each handler's ``request_deserializer`` with one that returns an
    :class:`Undecodable` marker instead of raising (bad UTF-8 in a ``string`` field,
    truncated or corrupt wire format), and raises :class:`InvalidArgument` when the
    marker reaches ``on_request``, for every RPC kind and for every message of a
    client stream. Interceptors outside it see a normal failed call.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        wrapped = await super().intercept_service(continuation, handler_call_details)
        if wrapped is None or wrapped.request_deserializer is None:
            return wrapped
        return wrapped._replace(request_deserializer=_lenient(wrapped.request_deserializer))  # type: ignore[attr-defined]

    async def on_request(self, call: CallInfo, message: Any) -> None:
        if isinstance(message, Undecodable):
            raise undecodable_error(message)


def undecodable_error(message: Undecodable) -> InvalidArgument:
    """The INVALID_ARGUMENT (reason ``MALFORMED_REQUEST``) for a request that did not decode."""
    detail = _decode_error_text(message.error)
    if message.field:
        violation = (message.field, "not valid UTF-8 (a string field must be UTF-8)")
    else:
        violation = ("", f"not a valid protobuf message ({message.size} bytes): {detail}")
    return InvalidArgument(f"request message could not be decoded: {detail}", [violation],
                           reason="MALFORMED_REQUEST")


class ValidationInterceptor(CallInterceptor):
    """Validate every incoming message with protovalidate (buf.validate rules).

    An invalid message raises :class:`InvalidArgument` with one field violation per
    broken rule, so the handler never sees it; the ErrorInterceptor outside maps it.
    """

    def __init__(self, validator: protovalidate.Validator | None = None) -> None:
        self._validator = validator or protovalidate.Validator()

    async def on_request(self, call: CallInfo, message: Any) -> None:
        self.check(message)

    def check(self, message: Any) -> None:
        """Raise :class:`InvalidArgument` when ``message`` (a protobuf message) breaks a rule."""
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


class ChainInterceptor(grpc.aio.ServerInterceptor):
    """Several server interceptors as one, composed once per method.

    grpc.aio runs every interceptor of a server on every call (a coroutine each, and
    each of ours builds a new wrapped handler). This one composes ``chain`` (outermost
    first) the first time a method is called and keeps the result: later calls of the
    method get the same wrapped handler. Valid for interceptors whose wrapping depends
    on the method alone, not on the call's metadata — every interceptor in this module.
    """

    def __init__(self, chain: Sequence[grpc.aio.ServerInterceptor]) -> None:
        self.chain = list(chain)
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = await self.wrap(handler, handler_call_details)
        self._handlers[method] = (handler, wrapped)
        return wrapped

    async def wrap(self, handler: grpc.RpcMethodHandler,
                   details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """``handler`` wrapped by the whole chain, innermost first."""
        wrapped: grpc.RpcMethodHandler | None = handler
        for icpt in reversed(self.chain):
            wrapped = await icpt.intercept_service(_returning(wrapped), details)
            if wrapped is None:
                return None
        return wrapped


def _returning(handler: grpc.RpcMethodHandler | None) -> Callable[[Any], Awaitable[Any]]:
    async def continuation(_details: Any) -> Any:
        return handler
    return continuation


class RuntimeInterceptor(ChainInterceptor):
    """The standard chain (:func:`default_interceptors`) as one interceptor, with unary
    calls handled by one function.

    Streams (and any chain that is not the standard one) go through the composed chain.
    A unary-unary method of the standard chain gets, once, a plan (its metric series,
    access rule, validator, lenient deserializer, idempotency wrapper) and one handler
    that does what the chain's hooks do, in the same order and with the same results:
    request id, log line, metrics, authentication and authorization (with the audit
    record), deadline, error mapping, decoding and validation. Profiling showed the
    generic hooks (an async context manager, a context proxy and a coroutine per hook
    and call, for nine interceptors) cost more than the work they do.
    """

    def __init__(self, chain: Sequence[grpc.aio.ServerInterceptor]) -> None:
        super().__init__(chain)
        self._parts = _standard_parts(self.chain)

    async def wrap(self, handler: grpc.RpcMethodHandler,
                   details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if self._parts is None or handler.unary_unary is None:
            return await super().wrap(handler, details)
        parts = self._parts
        method = details.method
        inner = handler
        if parts.idempotency is not None:
            inner = await parts.idempotency.intercept_service(_returning(handler), details)
            if inner is None:
                return None
        deserializer = handler.request_deserializer
        return grpc.unary_unary_rpc_method_handler(
            _fused_unary(parts, method, inner.unary_unary),
            request_deserializer=None if deserializer is None else _lenient(deserializer),
            response_serializer=handler.response_serializer,
        )


@dataclass
class _Parts:
    tracing: TracingInterceptor | None
    request_id: RequestIdInterceptor
    logging: LoggingInterceptor
    metrics: MetricsInterceptor | None
    auth: Any  # services.shared.authz.AuthInterceptor
    error: ErrorInterceptor
    validation: ValidationInterceptor
    idempotency: grpc.aio.ServerInterceptor | None


def _standard_parts(chain: Sequence[grpc.aio.ServerInterceptor]) -> _Parts | None:
    """The parts of ``chain`` when it is exactly the standard one (else None)."""
    from services.shared.authz import AuthInterceptor
    from services.shared.idempotency import IdempotencyInterceptor

    items = list(chain)
    tracing = items.pop(0) if items and type(items[0]) is TracingInterceptor else None
    kinds = [type(i) for i in items]
    metrics = items[2] if len(items) > 2 and kinds[2] is MetricsInterceptor else None
    core = [RequestIdInterceptor, LoggingInterceptor, *([MetricsInterceptor] if metrics else []), AuthInterceptor,
            DeadlineInterceptor, ErrorInterceptor, StreamEndInterceptor, DecodeInterceptor, ValidationInterceptor]
    if kinds[:len(core)] != core:
        return None
    rest = items[len(core):]
    if len(rest) > 1 or (rest and type(rest[0]) is not IdempotencyInterceptor):
        return None
    at = 2 + (metrics is not None)
    return _Parts(tracing=tracing, request_id=items[0], logging=items[1], metrics=metrics, auth=items[at],
                  error=items[at + 2], validation=items[at + 5], idempotency=rest[0] if rest else None)


def _fused_unary(parts: _Parts, method: str, inner: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """One unary-unary handler doing the standard chain's work (see RuntimeInterceptor).

    The steps below are the chain's hooks in its order, outermost first; comments name
    the interceptor each step comes from.
    """
    from services.shared.auth import CLAIMS_HEADER, MESH_IDENTITY_HEADER
    from services.shared.authz import PUBLIC_METHODS, method_rule, principal_var, rule_var

    grpc_type = "unary"
    series = parts.metrics.for_method(grpc_type, method) if parts.metrics is not None else None
    auth = parts.auth
    public = method.startswith(PUBLIC_METHODS)
    rule = None if public else method_rule(method)
    audited = rule is not None and rule.mutating
    domain = parts.error._domain
    auth_domain = auth.domain
    check = parts.validation.check
    abort_error = grpc.aio.AbortError
    perf_counter = time.perf_counter
    traced = parts.tracing is not None

    async def unary_unary(request: Any, context: Any) -> Any:
        # RequestIdInterceptor (and AuthInterceptor's and TracingInterceptor's headers,
        # read in the same pass).
        candidate = mesh = claims = traceparent = tracestate = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                candidate = value
            elif key == MESH_IDENTITY_HEADER:
                if mesh is None and isinstance(value, str):
                    mesh = value
            elif key == CLAIMS_HEADER and claims is None and isinstance(value, str):
                claims = value
            elif key == TRACEPARENT:
                traceparent = value
            elif key == TRACESTATE:
                tracestate = value
        # TracingInterceptor (outermost: the span covers the whole call and its log line).
        span = open_server_span(method, traceparent, tracestate) if traced else None
        request_id = candidate if isinstance(candidate, str) and _valid_request_id(candidate) else _mint_request_id()
        request_id_var.set(request_id)
        method_var.set(method)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        # LoggingInterceptor
        start = perf_counter()
        peer = context.peer()
        # MetricsInterceptor
        if series is not None:
            series.started.inc()
        error: BaseException | None = None
        response = None
        try:
            if series is not None:
                series.msg_received.inc()
            if rule is None:
                response = await _after_auth(request, context)
            else:
                # AuthInterceptor
                principal = refusal = None
                try:
                    principal = auth.authenticate(mesh, claims)
                    auth.authorize(rule, principal)
                except ForgeError as exc:
                    refusal = exc
                auth_error: BaseException | None = None
                try:
                    if refusal is not None:
                        if audited:
                            auth.write_audit(method, principal, _audit_resource(request), refusal.code.name)
                        await abort_with(context, refusal, auth_domain)
                    principal_var.set(principal)
                    rule_var.set(rule)  # owner_scoped methods check the creator (authz.require_owner)
                    if principal is not None and principal.expires_at is not None:
                        stream_expiry_var.set(principal.expires_at)
                    response = await _after_auth(request, context)
                except BaseException as exc:
                    auth_error = exc
                    raise
                finally:
                    if refusal is None and audited:
                        auth.write_audit(method, principal, _audit_resource(request),
                                         outcome_code(auth_error, context).name)
            if response is not None and series is not None:
                series.msg_sent.inc()
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = outcome_code(error, context)
            if series is not None:
                series.handled(code).inc()
                series.handling_seconds.observe(perf_counter() - start)
            log_finished(method, grpc_type, code, start, peer, request_id)
            if span is not None:
                end_rpc_span(span, code, server=True, error=error)
        if response is not None:
            # RequestIdInterceptor.on_response: the id in the initial metadata as well.
            with contextlib.suppress(Exception):
                await context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
        return response

    async def _after_auth(request: Any, context: Any) -> Any:
        # DeadlineInterceptor
        remaining = context.time_remaining()
        deadline_var.set(None if remaining is None else time.monotonic() + remaining)
        # ErrorInterceptor around DecodeInterceptor, ValidationInterceptor, the handler.
        try:
            if isinstance(request, Undecodable):
                raise undecodable_error(request)
            check(request)
            return await inner(request, context)
        except abort_error:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, unknown ones logged in abort_with
            await abort_with(context, _domain_error(exc), domain)

    return unary_unary


def _audit_resource(request: Any) -> str:
    from services.shared.authz import _resource_of
    return _resource_of(request)


def default_interceptors(
    metrics: GrpcServerMetrics | None,
    domain: str = DOMAIN,
    stop: asyncio.Event | None = None,
    stream_max_quiet_s: float | None = None,
    idempotency: grpc.aio.ServerInterceptor | None = None,
    service: str | None = None,
    stream_heartbeat_s: float | None = None,
) -> list[grpc.aio.ServerInterceptor]:
    """The standard chain (outermost first; metrics omitted when None; tracing when
    :func:`services.shared.tracing.configure_tracing` ran in this process), as one
    :class:`RuntimeInterceptor` (its ``chain`` lists the parts).

    ``stop`` is the server's stop event (``Service.stop_requested``): once it is set,
    open streams with a ``stream_end`` field end with UNAVAILABLE; so do those that
    send nothing for ``stream_max_quiet_s`` seconds (None/0: never). Streams whose
    response has a ``StreamHeartbeat heartbeat`` field get one after every
    ``stream_heartbeat_s`` seconds without a message (None/0: never).
    ``service`` names the service in its audit log (``AuthInterceptor``).
    """
    from services.shared.authz import AuthInterceptor  # authz builds on this module

    chain: list[grpc.aio.ServerInterceptor] = [RequestIdInterceptor(), LoggingInterceptor()]
    if tracing_enabled():  # configure_tracing() ran in this process (run_service does)
        chain.insert(0, TracingInterceptor())
    if metrics is not None:
        chain.append(MetricsInterceptor(metrics))
    chain.append(AuthInterceptor(domain, service or "unknown"))
    chain += [
        DeadlineInterceptor(),
        ErrorInterceptor(domain),
        StreamEndInterceptor(domain, stop, max_quiet_s=stream_max_quiet_s, heartbeat_s=stream_heartbeat_s),
        DecodeInterceptor(),
        ValidationInterceptor(),
    ]
    if idempotency is not None:  # innermost: only valid requests get a key
        chain.append(idempotency)
    return [RuntimeInterceptor(chain)]
