"""Credentials for the test suite: every test runs with auth on, carrying real tokens.

:func:`install` (run on import of the ``tests`` package, so also in child processes
running test code) makes every gRPC channel (``grpc.aio.insecure_channel``,
``grpc.insecure_channel``) made *by test code* — the services' own clients must manage
alone — and every ``httpx`` request carry credentials, so tests written before auth
keep working unchanged:

* ``authorization: Bearer <token>`` — a real ES256 token signed with the development
  key (:func:`services.shared.auth.mint_token`), which Envoy verifies; its subject is
  ``test-<role>-<test key>`` (one per test, :func:`set_test_key`), so the edge's
  per-subject rate limits meter tests like separate users;
* gRPC only: ``x-af-mesh-identity`` and ``x-af-claims`` — what Envoy adds after
  verifying a token, for tests that call a service directly, as Envoy would (Envoy
  drops both when a client sends them, so they give nothing at the edge).

The role is ``admin`` unless a test says otherwise with :func:`acting_as`, which
applies per call (contextvar) to gRPC channels and to httpx requests (``"service"``:
a peer service calling directly, with no user token)::

    with acting_as("viewer"):
        await stub.CancelTrainingJob(...)   # PERMISSION_DENIED
    with acting_as(None):                   # no credentials at all
        rest.get("/v1/trainingJobs")        # 401

An explicit ``authorization`` header or metadata entry in a call always wins; the
mesh headers are added only when the call does not name them. For credentials fixed at
construction use :func:`anonymous_channel` / :func:`anonymous_http` (nothing added,
ever) and :func:`headers` / :func:`metadata` / :func:`direct_metadata`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import grpc.aio
import httpx

from services.shared.auth import (
    CLAIMS_HEADER,
    MESH_IDENTITY_HEADER,
    SERVICE_ROLE,
    decode_claims_header,
    encode_claims_header,
    mesh_secret,
    mint_token,
    service_claims,
)

__all__ = [
    "DEFAULT_ROLE",
    "acting_as",
    "anonymous_channel",
    "anonymous_http",
    "anonymous_sync_channel",
    "bearer",
    "claims_of",
    "direct_metadata",
    "grpcurl_auth",
    "headers",
    "install",
    "metadata",
    "set_test_key",
    "token",
]

DEFAULT_ROLE = "admin"
#: Tokens minted for the suite live this long (the longest session is far shorter).
SESSION_TTL_S = 6 * 3600.0

_UNSET: Any = object()
_role: contextvars.ContextVar[str | None] = contextvars.ContextVar("af_test_role", default=DEFAULT_ROLE)
#: Set per test (tests/conftest.py): the bearer tokens added automatically name a subject
#: of that test's own, so the edge's per-subject rate limits meter each test separately,
#: as they would separate users.
_test_key: contextvars.ContextVar[str] = contextvars.ContextVar("af_test_key", default="")
_ORIGINAL: dict[str, Any] = {}


@functools.cache
def token(role: str = DEFAULT_ROLE) -> str:
    """A session-long token for ``role`` (subject ``test-<role>``), minted once."""
    return mint_token(role, subject=f"test-{role}", ttl_s=SESSION_TTL_S)


def bearer(role: str = DEFAULT_ROLE) -> str:
    return f"Bearer {token(role)}"


@functools.lru_cache(maxsize=256)
def _test_token(role: str, key: str) -> str:
    return mint_token(role, subject=f"test-{role}-{key}" if key else f"test-{role}", ttl_s=SESSION_TTL_S)


def set_test_key(key: str) -> None:
    """Name the running test (a short key): its automatic bearer tokens get their own
    subject, ``test-<role>-<key>``. Explicit :func:`token` / :func:`bearer` keep ``test-<role>``."""
    _test_key.set(key)


def _auto_bearer(role: str) -> str:
    return f"Bearer {_test_token(role, _test_key.get())}"


def claims_of(jwt_token: str) -> str:
    """The ``x-af-claims`` value Envoy would forward for this token (its payload segment)."""
    payload = jwt_token.split(".")[1]
    decode_claims_header(payload)  # a well-formed token
    return payload


def headers(role: str | None = DEFAULT_ROLE) -> dict[str, str]:
    """HTTP headers carrying ``role``'s token (``{}`` for None)."""
    return {} if role is None else {"authorization": bearer(role)}


def grpcurl_auth(role: str = DEFAULT_ROLE) -> list[str]:
    """grpcurl arguments sending ``role``'s token (``-H 'authorization: Bearer …'``)."""
    return ["-H", f"authorization: {bearer(role)}"]


def metadata(role: str | None = DEFAULT_ROLE) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``role``'s token, for calls through the edge."""
    return () if role is None else (("authorization", bearer(role)),)


def direct_metadata(role: str | None = DEFAULT_ROLE, *, jwt_token: str | None = None,
                    with_identity: bool = True) -> tuple[tuple[str, str], ...]:
    """What Envoy sends a service: the mesh secret and the verified claims of a token."""
    md: list[tuple[str, str]] = []
    if with_identity:
        md.append((MESH_IDENTITY_HEADER, mesh_secret()))
    if jwt_token is None and role is not None:
        jwt_token = token(role)
    if jwt_token is not None:
        md.append((CLAIMS_HEADER, claims_of(jwt_token)))
    return tuple(md)


@contextlib.contextmanager
def acting_as(role: str | None) -> Iterator[None]:
    """Calls made inside the block carry ``role``'s credentials (None: none at all)."""
    reset = _role.set(role)
    try:
        yield
    finally:
        _role.reset(reset)


def _default_metadata(existing: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    items = list(existing or ())
    role = _role.get()
    if role is None:
        return items
    keys = {k.lower() for k, _ in items}
    service = role == SERVICE_ROLE  # a peer service: no user token, its own claims
    if "authorization" not in keys and not service:
        items.append(("authorization", _auto_bearer(role)))
    if MESH_IDENTITY_HEADER not in keys:
        items.append((MESH_IDENTITY_HEADER, mesh_secret()))
    if CLAIMS_HEADER not in keys:
        claims = encode_claims_header(service_claims("tests")) if service else claims_of(token(role))
        items.append((CLAIMS_HEADER, claims))
    return items


# -- gRPC ------------------------------------------------------------------------------


def _aio_details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    md = grpc.aio.Metadata(*_default_metadata(list(details.metadata or ())))
    return grpc.aio.ClientCallDetails(details.method, details.timeout, md, details.credentials,
                                      details.wait_for_ready)


# grpc.aio files an interceptor under the first of the four interfaces it implements,
# so one class per kind of call.
class _UnaryUnaryCredentials(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


class _UnaryStreamCredentials(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details), request)


class _StreamUnaryCredentials(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_aio_details(details), request_iterator)


class _StreamStreamCredentials(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_aio_details(details), request_iterator)


def _aio_credentials() -> list[grpc.aio.ClientInterceptor]:
    """Adds the current role's credentials to each call that names none."""
    return [_UnaryUnaryCredentials(), _UnaryStreamCredentials(), _StreamUnaryCredentials(),
            _StreamStreamCredentials()]


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, md: list[tuple[str, Any]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = md
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _SyncCredentials(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    @staticmethod
    def _details(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, _default_metadata(details.metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class _SyncChannel(grpc.Channel):
    """``grpc.intercept_channel`` result that also works as a context manager."""

    def __init__(self, raw: grpc.Channel) -> None:
        self._raw = raw
        self._intercepted = grpc.intercept_channel(raw, _SyncCredentials())

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._raw.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._raw.unsubscribe(callback)

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.unary_unary(*args, **kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._intercepted.stream_stream(*args, **kwargs)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _SyncChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def anonymous_channel(target: str, *args: Any, **kwargs: Any) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel that never adds credentials."""
    return _ORIGINAL.get("aio", grpc.aio.insecure_channel)(target, *args, **kwargs)


def anonymous_sync_channel(target: str, *args: Any, **kwargs: Any) -> grpc.Channel:
    return _ORIGINAL.get("sync", grpc.insecure_channel)(target, *args, **kwargs)


def _from_tests() -> bool:
    """True when the channel is made by test code (not by the services under test, whose
    own credentials must work by themselves)."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return caller == "tests" or caller.startswith("tests.")


def _aio_insecure_channel(target: str, options: Any = None, compression: Any = None,
                          interceptors: Any = None) -> grpc.aio.Channel:
    extra = _aio_credentials() if _from_tests() else []
    return _ORIGINAL["aio"](target, options, compression, interceptors=[*extra, *(interceptors or ())])


def _sync_insecure_channel(target: str, options: Any = None, compression: Any = None) -> grpc.Channel:
    channel = _ORIGINAL["sync"](target, options, compression)
    return _SyncChannel(channel) if _from_tests() else channel


# -- httpx -----------------------------------------------------------------------------


_NO_AUTH = "x-af-test-anonymous"


def _add_auth(request: httpx.Request) -> None:
    if _NO_AUTH in request.headers:
        del request.headers[_NO_AUTH]
        return
    role = _role.get()
    if role is not None and "authorization" not in request.headers:
        request.headers["authorization"] = _auto_bearer(role)


async def _add_auth_async(request: httpx.Request) -> None:
    _add_auth(request)


def _hooked_init(original: Any, hook: Any) -> Any:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        hooks = self.event_hooks
        hooks["request"] = [hook, *hooks.get("request", [])]
        self.event_hooks = hooks

    return __init__


def anonymous_http(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose requests never carry credentials."""
    client = httpx.Client(**kwargs)
    client.headers[_NO_AUTH] = "1"
    return client


def install() -> None:
    """Patch the channel constructors and httpx clients (idempotent)."""
    if _ORIGINAL:
        return
    _ORIGINAL["aio"] = grpc.aio.insecure_channel
    _ORIGINAL["sync"] = grpc.insecure_channel
    _ORIGINAL["client_init"] = httpx.Client.__init__
    _ORIGINAL["async_client_init"] = httpx.AsyncClient.__init__
    grpc.aio.insecure_channel = _aio_insecure_channel  # type: ignore[assignment]
    grpc.insecure_channel = _sync_insecure_channel  # type: ignore[assignment]
    httpx.Client.__init__ = _hooked_init(httpx.Client.__init__, _add_auth)  # type: ignore[method-assign]
    httpx.AsyncClient.__init__ = _hooked_init(httpx.AsyncClient.__init__, _add_auth_async)  # type: ignore[method-assign]
