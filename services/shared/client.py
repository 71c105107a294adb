"""Typed client factory: retries only where safe, deadlines always bounded.

``make_channel`` returns a ``grpc.aio.Channel`` whose service config retries a call
only when it failed with UNAVAILABLE *and* its method was declared idempotent by the
caller; every other method is attempted once. The policy is the public client's
(:mod:`agentforge.client.retry`), so in-mesh and user clients retry alike. Its interceptor

* bounds each call's timeout by the time left on the RPC being handled
  (``min(own timeout, remaining)``, see :mod:`services.shared.context`), so a
  downstream call never outlives the upstream deadline;
* applies ``default_timeout`` to calls with a single response when none was given
  (streams with many responses keep no deadline unless propagated or explicit);
* forwards the current ``x-request-id``;
* makes a CLIENT span per call (:mod:`services.shared.tracing`) and sends its context as
  ``traceparent``, so the callee's span is its child;
* adds the mesh identity and the calling service's claims
  (:func:`services.shared.authz.outgoing_metadata`), which every peer requires.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from agentforge.client.retry import RetryPolicy, service_config
from services.shared.authz import outgoing_metadata
from services.shared.context import REQUEST_ID_KEY, remaining_seconds, request_id_var
from services.shared.tracing import (TRACEPARENT, end_client_span_when_done, end_rpc_span, start_client_span,
                                     traceparent_of)

__all__ = [
    "DeadlineInterceptor",
    "RetryPolicy",
    "effective_timeout",
    "make_channel",
    "service_config",
    "stub",
]

StubT = TypeVar("StubT")


def effective_timeout(own: float | None) -> float | None:
    """``min(own, time left on the incoming RPC)``; None when neither is set."""
    remaining = remaining_seconds()
    if remaining is None:
        return own
    return remaining if own is None else min(own, remaining)


class _DeadlineHooks:
    """Propagate deadline and request id from the RPC being handled; add mesh credentials."""

    def __init__(self, default_timeout: float | None = None) -> None:
        self._default = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails, single_response: bool,
                 span: Any = None) -> grpc.aio.ClientCallDetails:
        own = details.timeout
        if own is None and single_response:
            own = self._default
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        request_id = request_id_var.get()
        if request_id is not None and REQUEST_ID_KEY not in metadata:
            metadata.add(REQUEST_ID_KEY, request_id)
        if span is not None:
            traceparent = traceparent_of(span)
            if traceparent is not None:
                metadata[TRACEPARENT] = traceparent
        for key, value in outgoing_metadata({k: "" for k, _ in metadata}):
            metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            details.method, effective_timeout(own), metadata, details.credentials, details.wait_for_ready
        )

    async def _call(self, continuation: Any, details: Any, request: Any, single_response: bool) -> Any:
        span = start_client_span(details.method)
        try:
            call = await continuation(self._details(details, single_response, span), request)
        except BaseException:
            if span is not None:
                end_rpc_span(span, grpc.StatusCode.UNKNOWN, server=False)
            raise
        if span is not None:
            call.add_done_callback(functools.partial(_end_when_done, span))
        return call


#: Tasks that end client spans, held until they ran (the loop keeps weak references).
_ENDING: set[asyncio.Task[None]] = set()


def _end_when_done(span: Any, call: Any) -> None:
    # A done callback cannot await call.code(); a task does, at once (the call is done).
    task = asyncio.ensure_future(end_client_span_when_done(span, call))
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)


# grpc.aio files an interceptor under the FIRST of the four interfaces it implements
# (an if/elif chain in Channel.__init__), so one class per kind of call.
class _UnaryUnaryDeadline(_DeadlineHooks, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request, True)


class _UnaryStreamDeadline(_DeadlineHooks, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._call(continuation, client_call_details, request, False)


class _StreamUnaryDeadline(_DeadlineHooks, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator, True)


class _StreamStreamDeadline(_DeadlineHooks, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await self._call(continuation, client_call_details, request_iterator, False)


def DeadlineInterceptor(default_timeout: float | None = None) -> list[grpc.aio.ClientInterceptor]:  # noqa: N802
    """The client interceptors (one per kind of call) that propagate the deadline and
    request id of the RPC being handled and add the mesh credentials."""
    return [kind(default_timeout) for kind in
            (_UnaryUnaryDeadline, _UnaryStreamDeadline, _StreamUnaryDeadline, _StreamStreamDeadline)]


def make_channel(
    target: str,
    *,
    idempotent_methods: Iterable[str] = (),
    retry: RetryPolicy | None = RetryPolicy(),
    default_timeout: float | None = 10.0,
    keepalive_time_ms: int = 30_000,
    keepalive_timeout_ms: int = 10_000,
    max_message_bytes: int = 16 * 1024 * 1024,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An insecure aio channel to ``target`` (``host:port``).

    ``idempotent_methods``: full method names (``/pkg.Service/Method``) or whole
    services (``pkg.Service``) safe to resend; only they are retried, and only on
    UNAVAILABLE. Call it after any fork (channels must not cross a fork).
    """
    config = service_config(idempotent_methods, retry)
    opts: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *options,
    ]
    return grpc.aio.insecure_channel(
        target, options=opts, interceptors=[*DeadlineInterceptor(default_timeout), *interceptors]
    )


def stub(channel: grpc.aio.Channel, stub_cls: type[StubT]) -> StubT:
    """``stub_cls(channel)``, typed: ``stub(ch, TrainingServiceStub)``."""
    return stub_cls(channel)
