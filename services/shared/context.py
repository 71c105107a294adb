"""Per-call context shared by interceptors, logging and outgoing client calls.

The server interceptors set these variables in the task that runs a handler; code
called from the handler (domain logic, log calls, downstream client calls) reads them
without any argument passing.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

__all__ = [
    "REQUEST_ID_KEY",
    "deadline_var",
    "method_var",
    "remaining_seconds",
    "request_id_var",
    "stream_expiry_var",
    "stream_revoked_var",
]

#: Metadata key carrying the request id in and out of every RPC.
REQUEST_ID_KEY = "x-request-id"

#: Request id of the RPC being handled (None outside an RPC).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "af_request_id", default=None
)
#: Full method (``/pkg.Service/Method``) of the RPC being handled.
method_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "af_method", default=None
)
#: Absolute deadline of the incoming RPC on the ``time.monotonic()`` clock.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "af_deadline", default=None
)


def remaining_seconds() -> float | None:
    """Seconds left before the incoming RPC's deadline; None without one."""
    deadline = deadline_var.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
#: Wall-clock time (``time.time()``) after which the caller's token is no longer valid:
#: set by the auth interceptor, read by the stream interceptor, which ends a stream then.
stream_expiry_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "af_stream_expiry", default=None
)

#: Set when the caller's token is revoked while its stream is open (the auth
#: interceptor registers the stream's ``jti`` with the revocation list); the stream
#: interceptor ends the stream then, like at expiry.
stream_revoked_var: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "af_stream_revoked", default=None
)
