"""Domain errors and their one mapping to ``google.rpc.Status``.

Handlers and domain code raise these; the error interceptor turns them into a gRPC
status with rich details (``grpc-status-details-bin`` trailer)::

    ForgeError                      reason              grpc code
    ├── NotFound                    NOT_FOUND           NOT_FOUND
    ├── AlreadyExists               ALREADY_EXISTS      ALREADY_EXISTS
    ├── InvalidArgument             INVALID_ARGUMENT    INVALID_ARGUMENT  (+ BadRequest)
    ├── FailedPrecondition          FAILED_PRECONDITION FAILED_PRECONDITION
    ├── Aborted                     ABORTED             ABORTED
    ├── ResourceExhausted           RESOURCE_EXHAUSTED  RESOURCE_EXHAUSTED
    ├── Unavailable                 UNAVAILABLE         UNAVAILABLE
    ├── PermissionDenied            PERMISSION_DENIED   PERMISSION_DENIED
    ├── Unauthenticated             UNAUTHENTICATED     UNAUTHENTICATED
    ├── Unimplemented               UNIMPLEMENTED       UNIMPLEMENTED
    ├── OutOfRange                  OUT_OF_RANGE        OUT_OF_RANGE      (e.g. offset past the end)
    └── DataLoss                    DATA_LOSS           DATA_LOSS         (e.g. sha256 mismatch)

Every status carries one ``ErrorInfo{reason, domain, metadata}``: the one catalogue
for the whole mesh is ``agentforge.common.v1.ErrorReason`` (documented with its status
codes in docs/api.md), the domain is always :data:`DOMAIN` (``agentforge.dev``).
``reason`` defaults to the class's and may be refined per raise
(``NotFound(..., reason="JOB_NOT_FOUND")``); a reason that is not in the catalogue is
logged and replaced by the class's default, so a typo never reaches a client.

What a status quotes is bounded (:func:`to_rpc_status`): the message, each field
violation and each metadata value are cut to a prefix, and the whole status stays
under :data:`MAX_STATUS_BYTES`, so an error that echoes a huge input (a 30,000-character
label key) still fits in the trailers of every hop (gRPC clients accept 8 KiB of
metadata by default).

A dependency that is away is not a bug: :func:`as_domain_error` turns Redis being
unreachable (redis-py ``ConnectionError``/``TimeoutError``, ``BusyLoadingError``, the
bus's ``BusUnavailable``, the transient replies ``NOGROUP``/``LOADING``/``MASTERDOWN``/
``READONLY``/``TRYAGAIN`` of a Redis that just restarted, and builtin socket
``ConnectionError``) into :class:`Unavailable` with reason ``DEPENDENCY_UNAVAILABLE``, so
every RPC and every stream of every service answers UNAVAILABLE (retryable), never
INTERNAL, while Redis is down. Any other exception becomes INTERNAL with a generic
message; the exception itself is only logged, never sent to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import ClassVar

import grpc
import grpc.aio
from google.protobuf import any_pb2
from agentforge.common.v1 import common_pb2
from redis import exceptions as redis_errors
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.shared.context import REQUEST_ID_KEY, request_id_var

__all__ = [
    "DOMAIN",
    "MAX_STATUS_BYTES",
    "REASONS",
    "Aborted",
    "AlreadyExists",
    "DataLoss",
    "FailedPrecondition",
    "FieldViolation",
    "ForgeError",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "abort_with",
    "as_domain_error",
    "clip",
    "internal_status",
    "status_for_exception",
    "to_rpc_status",
]

_log = logging.getLogger(__name__)

#: (field path, description), e.g. ``("page_size", "must be at most 1000")``.
FieldViolation = tuple[str, str]

INTERNAL_MESSAGE = "internal error"

#: ``google.rpc.ErrorInfo.domain`` of every error the mesh sends (AIP-193).
DOMAIN = "agentforge.dev"

_REASON_PREFIX = "ERROR_REASON_"
#: The catalogue: every ``ErrorReason`` name without its prefix (UNSPECIFIED excluded).
REASONS: frozenset[str] = frozenset(
    name.removeprefix(_REASON_PREFIX)
    for name in common_pb2.ErrorReason.keys()
    if name != _REASON_PREFIX + "UNSPECIFIED"
)

#: Bounds on what a status quotes (characters), and on the serialized status (bytes).
MAX_MESSAGE_CHARS = 512
MAX_FIELD_CHARS = 160
MAX_DESCRIPTION_CHARS = 240
MAX_METADATA_CHARS = 160
MAX_STATUS_BYTES = 4096


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with ``…`` when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"


def _catalogued(reason: str, default: str) -> str:
    if reason in REASONS:
        return reason
    _log.error("error reason %r is not in agentforge.common.v1.ErrorReason; sending %s",
               clip(reason, 64), default)
    return default


class ForgeError(Exception):
    """Base of all domain errors; maps to a gRPC status with an ErrorInfo."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = _catalogued(reason, self.default_reason) if reason else self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class NotFound(ForgeError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ForgeError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class InvalidArgument(ForgeError):
    """Bad input; ``violations`` become ``BadRequest.field_violations``."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations: list[FieldViolation] = list(violations)


class FailedPrecondition(ForgeError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ForgeError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhausted(ForgeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(ForgeError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class PermissionDenied(ForgeError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(ForgeError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unimplemented(ForgeError):
    """The method exists in the contract but not in this deployment."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class OutOfRange(ForgeError):
    """A position past the end (e.g. a download offset beyond the file)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class DataLoss(ForgeError):
    """Bytes failed verification (e.g. a sha256 mismatch) and were discarded."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = "DATA_LOSS"


def _pack(message: object) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)  # type: ignore[arg-type]
    return detail


def to_rpc_status(exc: ForgeError, domain: str = DOMAIN) -> status_pb2.Status:
    """``google.rpc.Status`` for a domain error: ErrorInfo (+ BadRequest).

    Bounded: message, field paths, descriptions and metadata values are clipped
    (``MAX_*_CHARS``), and field violations that would take the serialized status over
    :data:`MAX_STATUS_BYTES` are left out (the message says how many).
    """
    status = status_pb2.Status(code=exc.code.value[0], message=clip(exc.message, MAX_MESSAGE_CHARS))
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=domain)
    for key, value in list(exc.metadata.items())[:16]:
        info.metadata[clip(key, 64)] = clip(value, MAX_METADATA_CHARS)
    status.details.append(_pack(info))
    if isinstance(exc, InvalidArgument) and exc.violations:
        bad = error_details_pb2.BadRequest()
        budget = MAX_STATUS_BYTES - status.ByteSize() - 64
        for index, (field, description) in enumerate(exc.violations):
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=clip(field, MAX_FIELD_CHARS), description=clip(description, MAX_DESCRIPTION_CHARS))
            size = violation.ByteSize() + 4
            if size > budget:
                left = len(exc.violations) - index
                suffix = f" ({left} more violations not listed)"
                status.message = clip(exc.message, MAX_MESSAGE_CHARS - len(suffix)) + suffix
                break
            bad.field_violations.append(violation)
            budget -= size
        status.details.append(_pack(bad))
    return status


def internal_status(domain: str = DOMAIN) -> status_pb2.Status:
    """The generic INTERNAL status sent for unexpected exceptions."""
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    status.details.append(_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=domain)))
    return status


#: Error replies of a Redis that is restarting or just restarted (retrying helps).
_TRANSIENT_REPLIES = ("NOGROUP", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")


def _dependency_errors() -> tuple[type[BaseException], ...]:
    from services.shared.bus import BusUnavailable  # bus does not import this module

    return (redis_errors.ConnectionError, redis_errors.TimeoutError, BusUnavailable, ConnectionError)


def as_domain_error(exc: BaseException) -> BaseException:
    """``exc`` as a domain error when it means a dependency is away; otherwise ``exc``.

    Redis unreachable or restarting → :class:`Unavailable` (reason
    ``DEPENDENCY_UNAVAILABLE``, metadata ``dependency=redis``). The original exception
    is kept as ``__cause__`` for the logs; its text is not sent to clients beyond its
    class name.
    """
    if isinstance(exc, ForgeError):
        return exc
    transient_reply = isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)
    if transient_reply or isinstance(exc, _dependency_errors()):
        mapped = Unavailable(
            f"redis is unavailable ({type(exc).__name__}); retry with backoff",
            reason="DEPENDENCY_UNAVAILABLE",
            metadata={"dependency": "redis"},
        )
        mapped.__cause__ = exc
        return mapped
    return exc


def status_for_exception(exc: BaseException, domain: str = DOMAIN) -> status_pb2.Status:
    """Map any exception; non-domain ones are logged and hidden behind INTERNAL."""
    exc = as_domain_error(exc)
    if isinstance(exc, ForgeError):
        if isinstance(exc, Unavailable) and exc.__cause__ is not None:
            _log.warning("dependency unavailable: %r", exc.__cause__)
        return to_rpc_status(exc, domain)
    _log.error("unhandled exception in handler", exc_info=exc)
    return internal_status(domain)


async def abort_with(
    context: grpc.aio.ServicerContext, exc: BaseException, domain: str = DOMAIN
) -> None:
    """Abort the RPC with the status for ``exc`` (always raises)."""
    status = rpc_status.to_status(status_for_exception(exc, domain))
    trailers = tuple(status.trailing_metadata)
    request_id = request_id_var.get()
    if request_id is not None:
        trailers += ((REQUEST_ID_KEY, request_id),)
    await context.abort(status.code, status.details, trailers)
