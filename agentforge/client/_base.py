"""The call machinery under the generated per-service classes (``*_service_client.py``).

One :class:`Transport` (sync) or :class:`AsyncTransport` per client: a gRPC channel to the
edge with the shared retry policy (:mod:`agentforge.client.retry`) applied to the
idempotent methods of every service, the bearer token and a default deadline. The
service bases turn each RPC into a plain method call that raises
:class:`agentforge.client.errors.ApiError` subclasses, and implement the resumable
watches: on UNAVAILABLE the stream is reopened with the cursor of the last message
handed to the caller, and a message whose cursor (or ``(epoch, sequence)``) was already
handed out is dropped, so the caller sees every event once and in order.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import grpc
import grpc.aio
from google.protobuf import message as _message

from agentforge.client.errors import ApiError, DeadlineExceededError, UnavailableError, from_rpc_error
from agentforge.client.retry import RetryPolicy, service_config

__all__ = [
    "DEFAULT_EDGE",
    "AsyncServiceBase",
    "AsyncTransport",
    "ClientConfig",
    "SyncServiceBase",
    "Transport",
]

#: Where the client connects when neither ``edge=`` nor ``AGENTFORGE_EDGE`` says.
DEFAULT_EDGE = "127.0.0.1:8080"
#: Environment variables the client reads (``AF_TOKEN`` is the mesh's own name for it).
EDGE_ENV = "AGENTFORGE_EDGE"
TOKEN_ENVS = ("AGENTFORGE_TOKEN", "AF_TOKEN")
CA_CERT_ENV = "AGENTFORGE_CA_CERT"

M = TypeVar("M", bound=_message.Message)
R = TypeVar("R", bound=_message.Message)


@dataclass(frozen=True)
class ClientConfig:
    """How a client reaches the edge.

    ``edge``: ``host:port``, optionally with a scheme: ``grpc://``/``http://`` (plaintext
    h2c, the default) or ``grpcs://``/``https://`` (TLS, verified against
    ``ca_cert`` or the system roots). ``token``: a bearer token (JWT) sent as
    ``authorization: Bearer <token>`` on every call. ``timeout_s``: the deadline of every
    unary call that names none (streams have none unless given). ``retry``: the policy for
    idempotent calls and watch reconnects; ``reconnect_timeout_s``: how long a watch keeps
    trying to reconnect after it lost the stream before it raises UnavailableError.
    """

    edge: str = DEFAULT_EDGE
    token: str | None = None
    timeout_s: float | None = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    reconnect_timeout_s: float = 60.0
    ca_cert: str | None = None
    user_agent: str = "agentforge-client"

    @classmethod
    def resolve(
        cls,
        edge: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float | None = 30.0,
        retry: RetryPolicy | None = None,
        reconnect_timeout_s: float = 60.0,
        ca_cert: str | None = None,
        user_agent: str = "agentforge-client",
    ) -> ClientConfig:
        """Arguments first, then ``AGENTFORGE_EDGE`` / ``AGENTFORGE_TOKEN`` (or ``AF_TOKEN``) /
        ``AGENTFORGE_CA_CERT``, then the defaults."""
        if token is None:
            token = next((os.environ[k] for k in TOKEN_ENVS if os.environ.get(k)), None)
        return cls(
            edge=edge or os.environ.get(EDGE_ENV) or DEFAULT_EDGE,
            token=token.strip() if token else None,
            timeout_s=timeout_s,
            retry=retry or RetryPolicy(),
            reconnect_timeout_s=reconnect_timeout_s,
            ca_cert=ca_cert or os.environ.get(CA_CERT_ENV) or None,
            user_agent=user_agent,
        )

    def target(self) -> tuple[str, bool]:
        """``(host:port, tls)`` from :attr:`edge`."""
        edge = self.edge.strip()
        tls = False
        for scheme, secure in (("grpcs://", True), ("https://", True), ("grpc://", False), ("http://", False)):
            if edge.startswith(scheme):
                edge, tls = edge[len(scheme):], secure
                break
        edge = edge.rstrip("/")
        if not edge or "/" in edge:
            raise ValueError(f"edge address must be host:port, got {self.edge!r}")
        if ":" not in edge.rsplit("]", 1)[-1]:
            edge += ":443" if tls else ":8080"
        return edge, tls


def _channel_options(config: ClientConfig, idempotent: Sequence[str]) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(idempotent, config.retry))),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.primary_user_agent", config.user_agent),
    ]


def _credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    roots = Path(config.ca_cert).read_bytes() if config.ca_cert else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


class _TransportBase:
    def __init__(self, config: ClientConfig, idempotent: Sequence[str]) -> None:
        self.config = config
        self.target, self.tls = config.target()
        self.options = _channel_options(config, idempotent)
        auth: tuple[tuple[str, str], ...] = ()
        if config.token:
            auth = (("authorization", f"Bearer {config.token}"),)
        self._auth = auth

    def metadata(self, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        return (*self._auth, *extra)

    def timeout(self, given: float | None, unary: bool) -> float | None:
        if given is not None:
            return given
        return self.config.timeout_s if unary else None


class Transport(_TransportBase):
    """A blocking channel to the edge (``grpc.Channel``); close it when done."""

    def __init__(self, config: ClientConfig, idempotent: Sequence[str]) -> None:
        super().__init__(config, idempotent)
        if self.tls:
            self.channel = grpc.secure_channel(self.target, _credentials(config), options=self.options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=self.options)

    def close(self) -> None:
        self.channel.close()


class AsyncTransport(_TransportBase):
    """A ``grpc.aio`` channel to the edge; create it inside the event loop that uses it."""

    def __init__(self, config: ClientConfig, idempotent: Sequence[str]) -> None:
        super().__init__(config, idempotent)
        if self.tls:
            self.channel = grpc.aio.secure_channel(self.target, _credentials(config), options=self.options)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=self.options)

    async def close(self) -> None:
        await self.channel.close()


def _request(cls: type[M], request: M | None, fields: Mapping[str, Any]) -> M:
    if request is None:
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{cls.DESCRIPTOR.name}: {exc}") from None
    if fields:
        raise TypeError("pass either a request message or its fields as keyword arguments, not both")
    if not isinstance(request, cls):
        raise TypeError(f"expected {cls.DESCRIPTOR.full_name}, got {type(request).__name__}")
    return request


def _keyed(request: M) -> M:
    if not getattr(request, "request_id", "x"):
        copy = type(request)()
        copy.CopyFrom(request)
        copy.request_id = uuid.uuid4().hex  # type: ignore[attr-defined]
        return copy
    return request


class _Resume:
    """Cursor bookkeeping of one resumable watch: where to resume, what was handed out."""

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_seq: dict[str, int] = {}

    @staticmethod
    def cursor_of(msg: _message.Message) -> str:
        fields = msg.DESCRIPTOR.fields_by_name
        if "cursor" in fields:
            return str(getattr(msg, "cursor"))
        oneof = msg.DESCRIPTOR.oneofs_by_name.get("kind")
        if oneof is not None:
            kind = msg.WhichOneof("kind")
            if kind is not None:
                inner = getattr(msg, kind)
                if isinstance(inner, _message.Message) and "cursor" in inner.DESCRIPTOR.fields_by_name:
                    return str(getattr(inner, "cursor"))
        return ""

    @staticmethod
    def is_stream_end(msg: _message.Message) -> bool:
        return "kind" in msg.DESCRIPTOR.oneofs_by_name and msg.WhichOneof("kind") == "stream_end"

    @staticmethod
    def is_heartbeat(msg: _message.Message) -> bool:
        """A watch stream's keepalive (``agentforge.common.v1.StreamHeartbeat``): not an
        event, never handed out. (Realtime ``Subscribe`` heartbeats are another type and
        carry a cursor; they are handed out as before.)"""
        field = msg.DESCRIPTOR.fields_by_name.get("heartbeat")
        return (field is not None and field.message_type is not None
                and field.message_type.full_name == "agentforge.common.v1.StreamHeartbeat"
                and msg.HasField("heartbeat"))

    @classmethod
    def is_control(cls, msg: _message.Message) -> bool:
        """``stream_end`` or a keepalive: messages of the stream, not of the caller."""
        return cls.is_stream_end(msg) or cls.is_heartbeat(msg)

    def accept(self, msg: _message.Message) -> bool:
        """True when ``msg`` is new (and remember it); False for a duplicate."""
        cursor = self.cursor_of(msg)
        fields = msg.DESCRIPTOR.fields_by_name
        if "sequence" in fields and "epoch" in fields:
            epoch, seq = str(getattr(msg, "epoch")), int(getattr(msg, "sequence"))
            if seq and seq <= self._last_seq.get(epoch, 0):
                return False
            if seq:
                self._last_seq[epoch] = seq
        if cursor:
            if cursor in self._seen:
                return False
            self._seen[cursor] = None
            if len(self._seen) > 4096:
                self._seen.popitem(last=False)
            self.cursor = cursor
        return True

    def with_cursor(self, request: M) -> M:
        if "cursor" not in request.DESCRIPTOR.fields_by_name:
            return request
        copy = type(request)()
        copy.CopyFrom(request)
        copy.cursor = self.cursor  # type: ignore[attr-defined]
        return copy


def _reconnectable(err: ApiError) -> bool:
    return isinstance(err, UnavailableError) and not isinstance(err, DeadlineExceededError)


class AsyncServiceBase:
    """Base of the generated async service classes (``AsyncTrainingService``, ...)."""

    _service: ClassVar[str] = ""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    def _path(self, method: str) -> str:
        return f"/{self._service}/{method}"

    async def _unary(
        self,
        method: str,
        req_cls: type[M],
        resp_cls: type[R],
        request: M | None,
        fields: Mapping[str, Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
        *,
        keyed: bool = False,
    ) -> R:
        req = _request(req_cls, request, fields)
        if keyed:
            req = _keyed(req)
        path = self._path(method)
        call = self._t.channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                           response_deserializer=resp_cls.FromString)
        try:
            return await call(req, timeout=self._t.timeout(timeout, True), metadata=self._t.metadata(metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, path) from None

    async def _stream_unary(
        self,
        method: str,
        resp_cls: type[R],
        requests: AsyncIterable[Any] | Iterable[Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> R:
        path = self._path(method)
        call: Any = self._t.channel.stream_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                                 response_deserializer=resp_cls.FromString)
        try:
            return await call(requests, timeout=self._t.timeout(timeout, False),  # type: ignore[no-any-return]
                              metadata=self._t.metadata(metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, path) from None

    async def _open(self, method: str, req_cls: type[M], resp_cls: type[R], req: M, timeout: float | None,
                    metadata: Sequence[tuple[str, str]]) -> AsyncIterator[R]:
        path = self._path(method)
        call = self._t.channel.unary_stream(path, request_serializer=req_cls.SerializeToString,
                                            response_deserializer=resp_cls.FromString)
        stream = call(req, timeout=timeout, metadata=self._t.metadata(metadata))
        try:
            async for msg in stream:
                yield msg
        finally:
            stream.cancel()

    async def _unary_stream(
        self,
        method: str,
        req_cls: type[M],
        resp_cls: type[R],
        request: M | None,
        fields: Mapping[str, Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[R]:
        req = _request(req_cls, request, fields)
        try:
            async for msg in self._open(method, req_cls, resp_cls, req, timeout, metadata):
                if not _Resume.is_control(msg):
                    yield msg
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self._path(method)) from None

    async def _resumable_stream(
        self,
        method: str,
        req_cls: type[M],
        resp_cls: type[R],
        request: M | None,
        fields: Mapping[str, Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> AsyncIterator[R]:
        req = _request(req_cls, request, fields)
        state = _Resume(str(getattr(req, "cursor", "")))
        policy = self._t.config.retry
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        lost_at: float | None = None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async for msg in self._open(method, req_cls, resp_cls, state.with_cursor(req), left, metadata):
                    attempt, lost_at = 0, None
                    if _Resume.is_control(msg):
                        continue  # a keepalive, or stream_end: the call's status follows (OK ends)
                    if state.accept(msg):
                        yield msg
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self._path(method))
                now = time.monotonic()
                lost_at = lost_at if lost_at is not None else now
                if not _reconnectable(err) or now - lost_at > self._t.config.reconnect_timeout_s:
                    raise err from None
                if deadline is not None and now >= deadline:
                    raise err from None
                attempt += 1
                await asyncio.sleep(policy.backoff_s(attempt) + 0.05)


class SyncServiceBase:
    """Base of the generated blocking service classes (``TrainingService``, ...)."""

    _service: ClassVar[str] = ""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def _path(self, method: str) -> str:
        return f"/{self._service}/{method}"

    def _unary(
        self,
        method: str,
        req_cls: type[M],
        resp_cls: type[R],
        request: M | None,
        fields: Mapping[str, Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
        *,
        keyed: bool = False,
    ) -> R:
        req = _request(req_cls, request, fields)
        if keyed:
            req = _keyed(req)
        path = self._path(method)
        call = self._t.channel.unary_unary(path, request_serializer=req_cls.SerializeToString,
                                           response_deserializer=resp_cls.FromString)
        try:
            return call(req, timeout=self._t.timeout(timeout, True), metadata=self._t.metadata(metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, path) from None

    def _stream_unary(
        self,
        method: str,
        resp_cls: type[R],
        requests: Iterable[Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> R:
        path = self._path(method)
        call: Any = self._t.channel.stream_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                                 response_deserializer=resp_cls.FromString)
        try:
            return call(iter(requests), timeout=self._t.timeout(timeout, False),  # type: ignore[no-any-return]
                        metadata=self._t.metadata(metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, path) from None

    def _open(self, method: str, req_cls: type[M], resp_cls: type[R], req: M, timeout: float | None,
              metadata: Sequence[tuple[str, str]]) -> Iterator[R]:
        path = self._path(method)
        call = self._t.channel.unary_stream(path, request_serializer=req_cls.SerializeToString,
                                            response_deserializer=resp_cls.FromString)
        stream = call(req, timeout=timeout, metadata=self._t.metadata(metadata))
        try:
            yield from stream
        finally:
            stream.cancel()

    def _unary_stream(
        self,
        method: str,
        req_cls: type[M],
        resp_cls: type[R],
        request: M | None,
        fields: Mapping[str, Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> Iterator[R]:
        req = _request(req_cls, request, fields)
        try:
            for msg in self._open(method, req_cls, resp_cls, req, timeout, metadata):
                if not _Resume.is_control(msg):
                    yield msg
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self._path(method)) from None

    def _resumable_stream(
        self,
        method: str,
        req_cls: type[M],
        resp_cls: type[R],
        request: M | None,
        fields: Mapping[str, Any],
        timeout: float | None,
        metadata: Sequence[tuple[str, str]],
    ) -> Iterator[R]:
        req = _request(req_cls, request, fields)
        state = _Resume(str(getattr(req, "cursor", "")))
        policy = self._t.config.retry
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        lost_at: float | None = None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                for msg in self._open(method, req_cls, resp_cls, state.with_cursor(req), left, metadata):
                    attempt, lost_at = 0, None
                    if _Resume.is_control(msg):
                        continue  # a keepalive, or stream_end: the call's status follows
                    if state.accept(msg):
                        yield msg
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self._path(method))
                now = time.monotonic()
                lost_at = lost_at if lost_at is not None else now
                if not _reconnectable(err) or now - lost_at > self._t.config.reconnect_timeout_s:
                    raise err from None
                if deadline is not None and now >= deadline:
                    raise err from None
                attempt += 1
                time.sleep(policy.backoff_s(attempt) + 0.05)
