"""The client's exception tree: one class per kind of failure a caller handles differently.

Every failed call raises an :class:`ApiError` subclass carrying what the server sent
(``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer, see
https://google.aip.dev/193): the status code, the message, the ``ErrorInfo`` reason,
domain and metadata, the ``BadRequest`` field violations and the ``RetryInfo`` delay::

    ApiError                         any other code (INTERNAL, UNKNOWN, UNIMPLEMENTED, ...)
    ├── InvalidArgumentError         INVALID_ARGUMENT, OUT_OF_RANGE   (fix the request)
    ├── NotFoundError                NOT_FOUND
    ├── AlreadyExistsError           ALREADY_EXISTS
    ├── FailedPreconditionError      FAILED_PRECONDITION, ABORTED     (wrong state; retry later)
    ├── AuthError                    UNAUTHENTICATED, PERMISSION_DENIED
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED               (rate limited; see retry_delay_s)
    └── UnavailableError             UNAVAILABLE                      (edge or a service is away)
        └── DeadlineExceededError    DEADLINE_EXCEEDED
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import message as _message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AlreadyExistsError",
    "ApiError",
    "AuthError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnavailableError",
    "from_rpc_error",
]

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: ``field`` is its path (``spec.max_steps``)."""

    field: str
    description: str
    reason: str = ""


class ApiError(Exception):
    """A call failed with a non-OK gRPC status.

    Attributes: ``code`` (:class:`grpc.StatusCode`), ``message`` (the status message),
    ``reason``/``domain``/``error_metadata`` (``google.rpc.ErrorInfo``; empty when the
    server sent none), ``field_violations`` (``google.rpc.BadRequest``),
    ``retry_delay_s`` (``google.rpc.RetryInfo``, None when absent), ``method`` (the full
    gRPC method, when known) and ``status`` (the whole ``google.rpc.Status``).
    """

    codes: ClassVar[tuple[grpc.StatusCode, ...]] = ()

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        error_metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay_s: float | None = None,
        method: str = "",
        status: status_pb2.Status | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.error_metadata = dict(error_metadata or {})
        self.field_violations = field_violations
        self.retry_delay_s = retry_delay_s
        self.method = method
        self.status = status if status is not None else status_pb2.Status(code=code.value[0], message=message)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason and self.reason != self.code.name:
            text += f" [{self.reason}]"
        for v in self.field_violations:
            text += f"\n  {v.field}: {v.description}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``forge --json`` prints for a failure)."""
        out: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.reason:
            out["reason"] = self.reason
        if self.domain:
            out["domain"] = self.domain
        if self.error_metadata:
            out["metadata"] = self.error_metadata
        if self.field_violations:
            out["fieldViolations"] = [{"field": v.field, "description": v.description} for v in self.field_violations]
        if self.retry_delay_s is not None:
            out["retryDelaySeconds"] = self.retry_delay_s
        return out


class InvalidArgumentError(ApiError):
    """The request is malformed: see ``field_violations``."""

    codes = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)


class NotFoundError(ApiError):
    """The named resource does not exist."""

    codes = (grpc.StatusCode.NOT_FOUND,)


class AlreadyExistsError(ApiError):
    """A resource with that name exists already."""

    codes = (grpc.StatusCode.ALREADY_EXISTS,)


class FailedPreconditionError(ApiError):
    """The resource is not in a state that allows the call (e.g. pausing a finished job)."""

    codes = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)


class AuthError(ApiError):
    """No valid token (UNAUTHENTICATED) or the token's role may not do this (PERMISSION_DENIED)."""

    codes = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class ResourceExhaustedError(ApiError):
    """Rate limited or over a quota; wait ``retry_delay_s`` when given."""

    codes = (grpc.StatusCode.RESOURCE_EXHAUSTED,)


class UnavailableError(ApiError):
    """The edge or a service behind it is away; safe calls were already retried."""

    codes = (grpc.StatusCode.UNAVAILABLE,)


class DeadlineExceededError(UnavailableError):
    """The call's deadline passed before it completed."""

    codes = (grpc.StatusCode.DEADLINE_EXCEEDED,)


_BY_CODE: dict[grpc.StatusCode, type[ApiError]] = {
    code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AuthError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
    )
    for code in cls.codes
}


def error_class(code: grpc.StatusCode) -> type[ApiError]:
    """The :class:`ApiError` subclass raised for ``code``."""
    return _BY_CODE.get(code, ApiError)


def _status_from_metadata(metadata: Any) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except _message.DecodeError:
                return None
    return None


def from_rpc_error(exc: grpc.RpcError, method: str = "") -> ApiError:
    """The :class:`ApiError` for a failed sync or ``grpc.aio`` call."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = (exc.details() if hasattr(exc, "details") else "") or ""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    status = _status_from_metadata(trailers)
    reason = domain = ""
    meta: dict[str, str] = {}
    violations: list[FieldViolation] = []
    delay: float | None = None
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, meta = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_r = error_details_pb2.RetryInfo()
                detail.Unpack(info_r)
                delay = info_r.retry_delay.ToTimedelta().total_seconds()
    return error_class(code)(
        code,
        message,
        reason=reason,
        domain=domain,
        error_metadata=meta,
        field_violations=tuple(violations),
        retry_delay_s=delay,
        method=method,
        status=status,
    )
