"""Event bus on Redis Streams (``redis.asyncio``), carrying protobuf messages.

One event is one stream entry with these fields (all bytes on the wire):

=============  ==============================================================
``id``         event id, uuid4 hex unless the publisher gives one
``type``       full protobuf name of the payload (``DESCRIPTOR.full_name``)
``subject``    what the event is about (e.g. ``trainingJobs/42``)
``seq``        per-(stream, subject) sequence, 1, 2, 3…; allocated in the same
               Lua script as the XADD, so sequence order == stream order
``traceparent`` W3C trace context: the publisher's span (below)
``epoch``      the stream's epoch (below)
``time``       unix milliseconds at publish
``data``       the serialized message
=============  ==============================================================

Epoch. Each stream has a key ``<stream>:epoch`` set once with a random token
(``SET`` if absent, inside the publish script). A Redis without persistence forgets
the key on restart together with the stream, groups and sequences; the next publish or
read mints a new token. A :class:`Cursor` remembers the epoch it was taken in, so
:meth:`EventBus.read` and :meth:`EventBus.follow` report :class:`EpochChanged` instead of
silently resuming in a history that is no longer the same. Sequences restart at 1 in a
new epoch, so duplicate detection keys on ``(epoch, subject, seq)``
(:class:`Deduplicator`).

Consumer groups (:meth:`EventBus.consume`): XREADGROUP, XACK after the handler
returns, XAUTOCLAIM of entries idle longer than ``claim_idle_ms`` (a dead consumer's
or a failed handler's), and a dead-letter stream ``<stream>:dlq`` once an entry has
been delivered ``max_deliveries`` times. Delivery is at-least-once. ``NOGROUP`` (Redis
restarted) recreates the group; connection errors back off with jitter and retry.

Tracing (:mod:`services.shared.tracing`). A publish without an explicit
``trace_context`` runs in a ``send <stream>`` PRODUCER span, child of whatever span is
current, and the entries carry that span's context; :meth:`EventBus.consume` hands each
entry to its handler inside a ``process <stream>`` CONSUMER span, child of and linked to
the entry's ``traceparent``. So a trace continues across the bus.

Timeouts. Two pools: the command pool (:attr:`EventBus.client`, every call made on
behalf of an RPC) waits at most ``command_timeout_s`` (2 s) for a reply, so a Redis that
is hung rather than down (SIGSTOPped: it still accepts connections) fails the call with
``redis.exceptions.TimeoutError`` — UNAVAILABLE/``DEPENDENCY_UNAVAILABLE`` through
:func:`services.shared.errors.as_domain_error` — instead of holding it until its
deadline; blocking reads (``XREAD``/``XREADGROUP BLOCK``) use
:attr:`EventBus.blocking_client`, whose socket timeout ``socket_timeout_s`` exceeds
``block_ms``.

Redis must run with ``maxmemory-policy noeviction``: an evicted epoch key would look
like lost history.

Exceptions::

    BusError
     ├── BusUnavailable   publish gave up: its budget (``publish_timeout_s``) of retries
     │                    ran out, or Redis did not answer one (hung)
     ├── TypeMismatch     Envelope.unpack() with a class other than the event's type
     └── InvalidCursor    Cursor.parse() of a malformed token
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import Message
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agentforge.client.retry import backoff_delay
from services.shared import tracing

__all__ = [
    "Backoff",
    "BusConfig",
    "BusError",
    "BusUnavailable",
    "Cursor",
    "DeadLetter",
    "Deduplicator",
    "Envelope",
    "EpochChanged",
    "EventBus",
    "Handler",
    "InvalidCursor",
    "TypeMismatch",
    "decode_entry",
    "dlq_stream",
    "is_nogroup",
    "new_traceparent",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

#: Errors after which the bus reconnects (redis-py raises its own; sockets raise OSError).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    OSError,
)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


#: The least time the first attempt of a publish gets, whatever is left of its budget (s).
_MIN_ATTEMPT_S = 0.05


# --------------------------------------------------------------------------- errors
class BusError(Exception):
    """Base of the bus's own errors."""


class BusUnavailable(BusError):
    """Redis stayed unreachable for longer than the operation's budget."""


class TypeMismatch(BusError):
    """The envelope holds a different message type than the one asked for."""


class InvalidCursor(BusError, ValueError):
    """A cursor token that :meth:`Cursor.parse` cannot read."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between reconnect attempts."""

    #: First delay in seconds.
    initial_s: float = 0.05
    #: Upper bound of a delay in seconds.
    max_s: float = 2.0
    #: Growth factor per attempt.
    multiplier: float = 2.0
    #: Fraction of each delay that is randomised (0 = none, 1 = "full jitter").
    jitter: float = 0.5

    def delays(self) -> Iterator[float]:
        """Endless delays: ``d * (1 - jitter * U[0,1))`` with ``d`` growing to ``max_s``
        (the shared :func:`agentforge.client.retry.backoff_delay`)."""
        for attempt in itertools.count(1):
            yield backoff_delay(attempt, initial_s=self.initial_s, max_s=self.max_s, multiplier=self.multiplier,
                                jitter=self.jitter)


@dataclass(frozen=True, slots=True)
class BusConfig:
    """How the bus connects, trims, claims and retries. ``from_env()`` reads ``AF_BUS_*``."""

    #: Redis URL (env ``REDIS_URL``).
    url: str = "redis://127.0.0.1:6379/0"
    #: Approximate stream length kept by ``XADD MAXLEN ~``; 0 disables trimming.
    maxlen: int = 100_000
    #: A pending entry idle this long (ms) is claimed by another consumer (XAUTOCLAIM);
    #: also the retry delay of an entry whose handler raised.
    claim_idle_ms: int = 30_000
    #: Deliveries after which a failing entry moves to ``<stream>:dlq``.
    max_deliveries: int = 5
    #: XREAD/XREADGROUP block time (ms); bounds how late ``stop`` is noticed.
    block_ms: int = 1_000
    #: Reconnect backoff.
    backoff: Backoff = field(default_factory=Backoff)
    #: How long ``publish`` keeps retrying while Redis is unreachable (s).
    publish_timeout_s: float = 10.0
    #: Socket connect timeout (s).
    connect_timeout_s: float = 2.0
    #: How long one Redis command may wait for its reply, in seconds (env
    #: ``AF_BUS_COMMAND_TIMEOUT_S``): the socket timeout of the bus's command pool, which
    #: serves every call made on behalf of an RPC. A Redis that accepts connections but
    #: does not answer (hung, SIGSTOPped, swapping) is then a
    #: ``redis.exceptions.TimeoutError`` after this long, mapped to UNAVAILABLE
    #: (``DEPENDENCY_UNAVAILABLE``), instead of holding the RPC until its deadline.
    #: Blocking reads (XREAD/XREADGROUP ``BLOCK``) use :attr:`socket_timeout_s` instead.
    command_timeout_s: float = 2.0
    #: Socket read timeout (s) of the connections that make blocking reads (XREAD/
    #: XREADGROUP with ``BLOCK``, :meth:`EventBus.blocking_client`, the fan-out's
    #: readers); must exceed ``block_ms``.
    socket_timeout_s: float = 30.0
    #: Most connections the bus's client opens (a blocking pool: a command waits for a
    #: free connection instead of opening one more; env ``AF_BUS_MAX_CONNECTIONS``).
    #: Server streams do not hold these: they are fed by a
    #: :class:`~services.shared.fanout.BusFanout` with connections of its own.
    max_connections: int = 64
    #: How long a command waits for a free pooled connection before failing with a
    #: connection error (mapped to UNAVAILABLE), in seconds.
    pool_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        if self.block_ms >= self.socket_timeout_s * 1000:
            raise ValueError("block_ms must be shorter than socket_timeout_s")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if self.command_timeout_s <= 0:
            raise ValueError("command_timeout_s must be > 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BusConfig:
        """``REDIS_URL``, ``AF_BUS_MAXLEN``, ``AF_BUS_CLAIM_IDLE_MS``,
        ``AF_BUS_MAX_DELIVERIES``, ``AF_BUS_BLOCK_MS``, ``AF_BUS_BACKOFF_INITIAL_MS``,
        ``AF_BUS_BACKOFF_MAX_MS``, ``AF_BUS_PUBLISH_TIMEOUT_S``, ``AF_BUS_COMMAND_TIMEOUT_S``,
        ``AF_BUS_MAX_CONNECTIONS``; unset means default."""
        environ = os.environ if env is None else env
        base = cls()

        def num(name: str, default: float, kind: Callable[[str], Any] = int) -> Any:
            raw = environ.get(name, "").strip()
            return kind(raw) if raw else default

        backoff = Backoff(
            initial_s=num("AF_BUS_BACKOFF_INITIAL_MS", base.backoff.initial_s * 1000) / 1000,
            max_s=num("AF_BUS_BACKOFF_MAX_MS", base.backoff.max_s * 1000) / 1000,
        )
        return cls(
            url=environ.get("REDIS_URL", "").strip() or base.url,
            maxlen=num("AF_BUS_MAXLEN", base.maxlen),
            claim_idle_ms=num("AF_BUS_CLAIM_IDLE_MS", base.claim_idle_ms),
            max_deliveries=num("AF_BUS_MAX_DELIVERIES", base.max_deliveries),
            block_ms=num("AF_BUS_BLOCK_MS", base.block_ms),
            backoff=backoff,
            publish_timeout_s=num("AF_BUS_PUBLISH_TIMEOUT_S", base.publish_timeout_s, float),
            command_timeout_s=num("AF_BUS_COMMAND_TIMEOUT_S", base.command_timeout_s, float),
            max_connections=num("AF_BUS_MAX_CONNECTIONS", base.max_connections),
        )


# --------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in a stream: the epoch it belongs to and a Redis entry id.

    ``str(cursor)`` is an opaque token (``<epoch>:<entry id>``) that clients can hand
    back to resume; ``Cursor.parse`` reads it.
    """

    epoch: str
    entry_id: str

    def __str__(self) -> str:
        return f"{self.epoch}:{self.entry_id}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        epoch, sep, entry_id = token.rpartition(":")
        if not sep or not re.fullmatch(r"\d+-\d+", entry_id):
            raise InvalidCursor(f"not a bus cursor: {token!r}")
        return cls(epoch=epoch, entry_id=entry_id)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event as read from a stream."""

    stream: str
    cursor: Cursor
    id: str
    type: str
    subject: str
    seq: int
    epoch: str
    traceparent: str
    #: Unix milliseconds at publish.
    time: int
    data: bytes
    #: How often a consumer group has delivered this entry (1 outside groups).
    deliveries: int = 1

    def unpack(self, message_cls: type[M]) -> M:
        """Parse ``data`` as ``message_cls``; :class:`TypeMismatch` if the type differs."""
        expected = message_cls.DESCRIPTOR.full_name
        if self.type != expected:
            raise TypeMismatch(f"event {self.id} holds {self.type}, not {expected}")
        message = message_cls()
        message.ParseFromString(self.data)
        return message


@dataclass(frozen=True, slots=True)
class EpochChanged:
    """Marker from ``read``/``follow``: the stream's history since ``previous`` is gone.

    Items after it belong to epoch ``current`` and start at its beginning.
    """

    stream: str
    previous: str
    current: str

    @property
    def cursor(self) -> Cursor:
        """Where reading resumes: the start of the new epoch."""
        return Cursor(self.current, "0-0")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry moved to ``<stream>:dlq`` with why and after how many deliveries."""

    envelope: Envelope
    error: str
    deliveries: int
    source_stream: str
    source_cursor: Cursor
    group: str
    consumer: str


Handler = Callable[[Envelope], Awaitable[None]]
Item = Envelope | EpochChanged


class Deduplicator:
    """Remembers recently seen events so a handler can drop redeliveries.

    An event counts as seen if its ``(epoch, subject, seq)`` or its ``id`` was seen
    (the id catches a publish retried after a lost reply). Bounded: the oldest keys are
    forgotten beyond ``capacity``. Handlers that must survive restarts store
    ``(epoch, subject, seq)`` with their own state instead.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def seen(self, envelope: Envelope) -> bool:
        """True if already seen; otherwise record it and return False."""
        keys = (("seq", envelope.epoch, envelope.subject, str(envelope.seq)), ("id", envelope.id))
        if any(key in self._seen for key in keys):
            return True
        for key in keys:
            self._seen[key] = None
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._seen) // 2


def new_traceparent() -> str:
    """A fresh, sampled W3C ``traceparent``."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def is_nogroup(exc: BaseException) -> bool:
    """True for the ``NOGROUP`` reply: the group (or its stream) is gone, typically
    because Redis restarted without persistence. Recreate it with
    :meth:`EventBus.ensure_group` (or let :meth:`EventBus.with_group` do it)."""
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("NOGROUP")


def dlq_stream(stream: str) -> str:
    """Name of the dead-letter stream of ``stream``."""
    return f"{stream}:dlq"


def _epoch_key(stream: str) -> str:
    return f"{stream}:epoch"


def _seq_key(stream: str) -> str:
    return f"{stream}:seq"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def decode_entry(stream: str, entry_id: bytes | str, fields: Mapping[bytes, bytes], deliveries: int = 1) -> Envelope:
    """Decode a raw stream entry (as XREAD/XREADGROUP return it) into an :class:`Envelope`."""
    epoch = _text(fields.get(b"epoch"))
    return Envelope(
        stream=stream,
        cursor=Cursor(epoch, _text(entry_id)),
        id=_text(fields.get(b"id")),
        type=_text(fields.get(b"type")),
        subject=_text(fields.get(b"subject")),
        seq=int(fields.get(b"seq") or 0),
        epoch=epoch,
        traceparent=_text(fields.get(b"traceparent")),
        time=int(fields.get(b"time") or 0),
        data=bytes(fields.get(b"data") or b""),
        deliveries=deliveries,
    )


# --------------------------------------------------------------------------- scripts
# KEYS: stream, epoch key, seq hash. ARGV: new epoch, maxlen (0 = none), id, type,
# subject, traceparent, time, data. Returns {entry id, epoch, seq}.
_PUBLISH_LUA = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local seq = redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
local fields = {'id', ARGV[3], 'type', ARGV[4], 'subject', ARGV[5], 'seq', seq,
  'traceparent', ARGV[6], 'epoch', epoch, 'time', ARGV[7], 'data', ARGV[8]}
local entry
if tonumber(ARGV[2]) > 0 then
  entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
else
  entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
end
return {entry, epoch, seq}
"""

# The batch form of _PUBLISH_LUA: one script call appends every entry, in order, with
# per-subject sequences allocated as it goes. KEYS: stream, epoch key, seq hash.
# ARGV: new epoch, maxlen (0 = none), then 6 per entry: id, type, subject, traceparent,
# time, data. Returns {epoch, {entry id 1, seq 1, entry id 2, seq 2, ...}}.
_PUBLISH_MANY_LUA = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
local trim = tonumber(ARGV[2]) > 0
local out = {}
for i = 3, #ARGV, 6 do
  local seq = redis.call('HINCRBY', KEYS[3], ARGV[i + 2], 1)
  local fields = {'id', ARGV[i], 'type', ARGV[i + 1], 'subject', ARGV[i + 2], 'seq', seq,
    'traceparent', ARGV[i + 3], 'epoch', epoch, 'time', ARGV[i + 4], 'data', ARGV[i + 5]}
  local entry
  if trim then
    entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
  else
    entry = redis.call('XADD', KEYS[1], '*', unpack(fields))
  end
  out[#out + 1] = entry
  out[#out + 1] = seq
end
return {epoch, out}
"""

#: Entries per script call in :meth:`EventBus.publish_many` (bounds one call's run time).
_PUBLISH_MANY_CHUNK = 256

# KEYS: epoch key. ARGV: new epoch. Returns the epoch, minting it if absent.
_EPOCH_LUA = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
"""


def _raise_if_cancelling() -> None:
    """Re-raise a cancellation that redis-py swallowed.

    Cancelling a task inside a redis-py 8.1 command sometimes surfaces as
    ``ConnectionError`` ("Connection closed by server") or as a normal return, with the
    task still marked as cancelling; a retry loop would then run forever. Every loop
    here checks this after each Redis call.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def _new_epoch() -> str:
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- the bus
class EventBus:
    """Publish, read, follow and consume protobuf events on Redis Streams.

    Use as ``async with EventBus(config) as bus:``; or call :meth:`aclose` when done.
    """

    def __init__(self, config: BusConfig, *, client: Redis | None = None) -> None:
        self.config = config
        # Two pools: commands (short socket timeout: a hung Redis fails an RPC's call
        # within ``command_timeout_s``) and blocking reads (``socket_timeout_s`` > BLOCK).
        # A caller-given client serves both.
        self._client = client or self._pool_client(config.command_timeout_s)
        self._blocking: Redis | None = client
        self._owns_client = client is None
        self._publish_script = self._client.register_script(_PUBLISH_LUA)
        self._epoch_script = self._client.register_script(_EPOCH_LUA)
        self._publish_many_script = self._client.register_script(_PUBLISH_MANY_LUA)

    def _pool_client(self, socket_timeout_s: float) -> Redis:
        config = self.config
        return Redis(
            connection_pool=BlockingConnectionPool.from_url(
                config.url,
                max_connections=config.max_connections,
                timeout=config.pool_timeout_s,
                decode_responses=False,
                socket_connect_timeout=config.connect_timeout_s,
                socket_timeout=socket_timeout_s,
                # Reconnection is the bus's job (backoff, NOGROUP, epochs); the client
                # must not replay commands behind its back.
                retry=Retry(NoBackoff(), 0),
            ),
        )

    @property
    def client(self) -> Redis:
        """The underlying ``redis.asyncio`` client for commands: each reply is awaited
        at most ``command_timeout_s`` (then ``redis.exceptions.TimeoutError``). Not for
        blocking reads: use :attr:`blocking_client`."""
        return self._client

    @property
    def blocking_client(self) -> Redis:
        """A client for blocking reads (XREAD/XREADGROUP ``BLOCK`` up to ``block_ms``):
        socket timeout ``socket_timeout_s``; its own pool, opened on first use."""
        if self._blocking is None:
            self._blocking = self._pool_client(self.config.socket_timeout_s)
        return self._blocking

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose(close_connection_pool=True)
            if self._blocking is not None:
                await self._blocking.aclose(close_connection_pool=True)

    async def __aenter__(self) -> EventBus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- publish ----------------------------------------------------------------
    async def publish(
        self,
        stream: str,
        message: Message,
        *,
        subject: str = "",
        event_id: str | None = None,
        trace_context: str | None = None,
        budget_s: float | None = None,
    ) -> Cursor:
        """Append ``message`` to ``stream``; return the new entry's cursor.

        ``trace_context`` is a W3C ``traceparent``; when absent the publish runs in a
        ``send <stream>`` span and carries its context (a new traceparent without tracing).
        While Redis is unreachable the call retries with backoff, keeping the same event
        id, for up to ``budget_s`` seconds (default ``publish_timeout_s``; callers inside
        an RPC pass what is left of its deadline), then raises :class:`BusUnavailable`.
        """
        if trace_context is not None and not _TRACEPARENT.match(trace_context):
            raise ValueError(f"not a W3C traceparent: {trace_context!r}")
        event_id = event_id or uuid.uuid4().hex
        if trace_context is not None:
            return await self._publish(stream, message, subject, event_id, trace_context, budget_s)
        with tracing.producer_span(stream, message_id=event_id, subject=subject) as traceparent:
            return await self._publish(stream, message, subject, event_id, traceparent or new_traceparent(), budget_s)

    async def _publish(self, stream: str, message: Message, subject: str, event_id: str, trace_context: str,
                       budget_s: float | None) -> Cursor:
        keys = [stream, _epoch_key(stream), _seq_key(stream)]
        args: list[str | bytes | int] = [
            _new_epoch(),
            self.config.maxlen,
            event_id,
            message.DESCRIPTOR.full_name,
            subject,
            trace_context,
            int(time.time() * 1000),
            message.SerializeToString(),
        ]
        entry_id, epoch, _seq = await self._retrying(
            lambda: self._publish_script(keys=keys, args=args),
            budget_s=self.config.publish_timeout_s if budget_s is None else budget_s,
            what=f"publish to {stream}",
        )
        return Cursor(_text(epoch), _text(entry_id))

    async def publish_many(
        self,
        stream: str,
        messages: Sequence[Message],
        *,
        subject: str = "",
        serialized: Sequence[bytes] | None = None,
        event_ids: Sequence[str] | None = None,
        trace_context: str | None = None,
        budget_s: float | None = None,
    ) -> list[Cursor]:
        """Append ``messages`` to ``stream`` in order, in one round trip; their cursors.

        ``budget_s`` bounds the retries of each chunk while Redis is unreachable
        (default ``publish_timeout_s``), as in :meth:`publish`.

        Entries are exactly those :meth:`publish` would write one by one (same fields,
        per-subject ``seq`` allocated atomically in order), but one script call writes up
        to 256 of them, so no other publisher's entry lands between them. ``serialized``
        gives the messages' bytes when the caller has them already (not checked against
        the messages); ``event_ids`` their ids (uuid4 hex otherwise); ``trace_context``
        one traceparent for all (otherwise that of one ``send <stream>`` span around the
        whole call, or a new one per entry without tracing). Retries like
        :meth:`publish`, keeping the ids; a chunk that failed for good raises
        :class:`BusUnavailable` and the chunks after it are not sent.
        """
        if serialized is not None and len(serialized) != len(messages):
            raise ValueError("serialized must hold one entry per message")
        if event_ids is not None and len(event_ids) != len(messages):
            raise ValueError("event_ids must hold one entry per message")
        if trace_context is not None and not _TRACEPARENT.match(trace_context):
            raise ValueError(f"not a W3C traceparent: {trace_context!r}")
        if trace_context is not None or not messages:
            return await self._publish_many(stream, messages, subject, serialized, event_ids, trace_context, budget_s)
        with tracing.producer_span(stream, subject=subject, count=len(messages)) as traceparent:
            return await self._publish_many(stream, messages, subject, serialized, event_ids, traceparent, budget_s)

    async def _publish_many(self, stream: str, messages: Sequence[Message], subject: str,
                            serialized: Sequence[bytes] | None, event_ids: Sequence[str] | None,
                            trace_context: str | None, budget_s: float | None) -> list[Cursor]:
        keys = [stream, _epoch_key(stream), _seq_key(stream)]
        now = int(time.time() * 1000)
        cursors: list[Cursor] = []
        for start in range(0, len(messages), _PUBLISH_MANY_CHUNK):
            args: list[str | bytes | int] = [_new_epoch(), self.config.maxlen]
            for i in range(start, min(start + _PUBLISH_MANY_CHUNK, len(messages))):
                message = messages[i]
                args += [
                    event_ids[i] if event_ids is not None else uuid.uuid4().hex,
                    message.DESCRIPTOR.full_name,
                    subject,
                    trace_context or new_traceparent(),
                    now,
                    serialized[i] if serialized is not None else message.SerializeToString(),
                ]
            epoch, entries = await self._retrying(
                lambda args=args: self._publish_many_script(keys=keys, args=args),
                budget_s=self.config.publish_timeout_s if budget_s is None else budget_s,
                what=f"publish {(len(args) - 2) // 6} entries to {stream}",
            )
            epoch_text = _text(epoch)
            cursors += [Cursor(epoch_text, _text(entry_id)) for entry_id in entries[::2]]
        return cursors

    async def _retrying(self, call: Callable[[], Awaitable[Any]], *, budget_s: float, what: str) -> Any:
        """``call()`` until it succeeds, for at most ``budget_s`` seconds in all.

        A refused or dropped connection (Redis restarting) is retried with backoff while
        the budget lasts. A command that got no reply (``command_timeout_s``, or what was
        left of the budget, elapsed) is not retried: the server took the connection but
        does not answer (hung), another attempt would wait as long again, and the first
        one may still be applied when it wakes (a retry would append the entry twice).
        Either way the caller gets :class:`BusUnavailable` within ``budget_s`` (the first
        attempt gets at least ``_MIN_ATTEMPT_S``).
        """
        deadline = time.monotonic() + budget_s
        delays = self.config.backoff.delays()
        while True:
            left = max(deadline - time.monotonic(), _MIN_ATTEMPT_S)
            try:
                async with asyncio.timeout(left if left < self.config.command_timeout_s else None):
                    result = await call()
                _raise_if_cancelling()
                return result
            except (TimeoutError, redis_errors.TimeoutError) as exc:
                _raise_if_cancelling()
                waited = min(left, self.config.command_timeout_s)
                raise BusUnavailable(f"{what}: Redis did not answer within {waited:.2f}s") from exc
            except _CONNECTION_ERRORS as exc:
                _raise_if_cancelling()
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise BusUnavailable(f"{what}: {exc}") from exc
                log.warning("bus: %s failed (%s); retrying in %.2fs", what, exc, delay)
                await asyncio.sleep(delay)

    # -- epochs and cursors -------------------------------------------------------
    async def epoch(self, stream: str) -> str:
        """The stream's current epoch, minted if the stream has none yet."""
        return _text(await self._epoch_script(keys=[_epoch_key(stream)], args=[_new_epoch()]))

    async def latest_cursor(self, stream: str) -> Cursor:
        """Cursor of the newest entry (``0-0`` if empty): follow from it to see only new events."""
        epoch = await self.epoch(stream)
        last = await self._client.xrevrange(stream, count=1)
        return Cursor(epoch, _text(last[0][0]) if last else "0-0")

    # -- read / follow ------------------------------------------------------------
    async def read(
        self,
        stream: str,
        after: Cursor | None = None,
        *,
        block_ms: int | None = None,
        count: int = 100,
    ) -> list[Item]:
        """Entries after ``after`` (from the start if ``None``), at most ``count``.

        ``block_ms`` waits that long for new entries when there are none (``None``:
        don't wait). If ``after`` belongs to an older epoch, the list starts with
        :class:`EpochChanged` followed by entries from the start of the new epoch. The
        next cursor to read after is the last item's ``.cursor``.
        """
        current = await self.epoch(stream)
        items: list[Item] = []
        start = "0-0"
        if after is not None:
            if after.epoch and after.epoch != current:
                items.append(EpochChanged(stream, after.epoch, current))
                block_ms = None
            else:
                start = after.entry_id
        client = self._client if block_ms is None else self.blocking_client
        reply = await client.xread({stream: start}, count=count, block=block_ms)
        for _name, entries in reply or []:
            for entry_id, fields in entries:
                envelope = decode_entry(stream, entry_id, fields)
                if envelope.epoch != current and await self.epoch(stream) == envelope.epoch:
                    # Redis restarted while we were blocked: the rest is a new history.
                    items.append(EpochChanged(stream, current, envelope.epoch))
                    return items
                items.append(envelope)
        return items

    async def follow(
        self,
        stream: str,
        after: Cursor | None = None,
        *,
        count: int = 100,
    ) -> AsyncIterator[Item]:
        """Replay from ``after`` (from the start if ``None``), then follow live entries.

        Yields :class:`Envelope` items and, when history was lost (Redis restarted
        without persistence), an :class:`EpochChanged` before the new epoch's entries.
        Survives connection loss: reconnects with backoff and resumes from the last
        yielded cursor. Runs until the consumer stops iterating or is cancelled.
        """
        cursor = after
        delays = self.config.backoff.delays()
        while True:
            try:
                if cursor is None:
                    cursor = Cursor(await self.epoch(stream), "0-0")
                items = await self.read(stream, cursor, block_ms=self.config.block_ms, count=count)
                _raise_if_cancelling()
            except _CONNECTION_ERRORS as exc:
                _raise_if_cancelling()
                delay = next(delays)
                log.warning("bus: follow %s lost Redis (%s); retrying in %.2fs", stream, exc, delay)
                await asyncio.sleep(delay)
                continue
            delays = self.config.backoff.delays()
            for item in items:
                cursor = item.cursor
                yield item

    # -- consumer groups ----------------------------------------------------------
    async def ensure_group(self, stream: str, group: str, *, start_id: str = "0") -> None:
        """Create ``group`` on ``stream`` (and the stream) unless it exists.

        ``start_id="0"`` (default) lets a new group see the retained history; ``"$"``
        only what is published after.
        """
        try:
            await self._client.xgroup_create(stream, group, id=start_id, mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def with_group(
        self,
        stream: str,
        group: str,
        call: Callable[[], Awaitable[Any]],
        *,
        start_id: str = "0",
    ) -> Any:
        """``await call()``; on ``NOGROUP`` recreate ``group`` on ``stream`` and call once more.

        The one recovery path for consumer groups that a restarted Redis forgot
        (:meth:`consume` and the training queue both use it). Connection errors pass
        through to the caller, who owns the retry policy.
        """
        try:
            return await call()
        except redis_errors.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            log.warning("bus: group %s on %s is gone (Redis restarted?); recreating", group, stream)
            await self.ensure_group(stream, group, start_id=start_id)
            return await call()

    async def consume(
        self,
        stream: str,
        group: str,
        consumer: str | None,
        handler: Handler,
        *,
        stop: asyncio.Event | None = None,
        count: int = 10,
    ) -> None:
        """Deliver the group's entries to ``handler`` until ``stop`` is set or cancelled.

        An entry is XACKed after ``handler`` returns. If it raises, the entry stays
        pending and is redelivered after ``claim_idle_ms``; after ``max_deliveries`` it
        is copied to ``<stream>:dlq`` with the error and acked. Entries another consumer
        left pending longer than ``claim_idle_ms`` are claimed (XAUTOCLAIM). ``NOGROUP``
        recreates the group; connection errors back off and retry. ``stop`` is noticed
        within ``block_ms``.
        """
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        block = min(self.config.block_ms, max(1, self.config.claim_idle_ms))
        claim_from = "0-0"
        group_ready = False
        delays = self.config.backoff.delays()
        while stop is None or not stop.is_set():
            try:
                if not group_ready:
                    await self.ensure_group(stream, group)
                    group_ready = True
                claimed, claim_from = await self._autoclaim(stream, group, consumer, claim_from, count)
                _raise_if_cancelling()
                for envelope in claimed:
                    await self._deliver(stream, group, consumer, envelope, handler)
                reply = await self.blocking_client.xreadgroup(group, consumer, {stream: ">"}, count=count,
                                                              block=block)
                _raise_if_cancelling()
                for _name, entries in reply or []:
                    for entry_id, fields in entries:
                        if fields:
                            envelope = decode_entry(stream, entry_id, fields)
                            await self._deliver(stream, group, consumer, envelope, handler)
                delays = self.config.backoff.delays()
            except redis_errors.ResponseError as exc:
                if not is_nogroup(exc):
                    raise
                log.warning("bus: group %s on %s is gone (Redis restarted?); recreating", group, stream)
                group_ready = False
                claim_from = "0-0"
            except _CONNECTION_ERRORS as exc:
                _raise_if_cancelling()
                delay = next(delays)
                log.warning("bus: consumer %s/%s lost Redis (%s); retrying in %.2fs", group, consumer, exc, delay)
                group_ready = False
                claim_from = "0-0"
                await asyncio.sleep(delay)

    async def _autoclaim(
        self, stream: str, group: str, consumer: str, start: str, count: int
    ) -> tuple[list[Envelope], str]:
        reply = await self._client.xautoclaim(
            stream, group, consumer, min_idle_time=self.config.claim_idle_ms, start_id=start, count=count
        )
        next_start, entries = _text(reply[0]), [(i, f) for i, f in reply[1] if f]
        if not entries:
            return [], next_start
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id, _fields in entries:
                pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        claimed = []
        for (entry_id, fields), info in zip(entries, pending, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 1
            claimed.append(decode_entry(stream, entry_id, fields, deliveries))
        return claimed, next_start

    async def _deliver(self, stream: str, group: str, consumer: str, envelope: Envelope, handler: Handler) -> None:
        limit = self.config.max_deliveries
        if envelope.deliveries > limit:
            error = f"not acknowledged after {envelope.deliveries - 1} deliveries (consumer died?)"
            await self.dead_letter(stream, group, consumer, envelope, error)
            return
        try:
            with tracing.consumer_span(stream, envelope.traceparent, message_id=envelope.id, group=group,
                                       subject=envelope.subject):
                await handler(envelope)
        except Exception as exc:  # noqa: BLE001 - any handler failure is a failed delivery
            if envelope.deliveries >= limit:
                await self.dead_letter(stream, group, consumer, envelope, f"{type(exc).__name__}: {exc}")
            else:
                log.warning(
                    "bus: handler failed on %s %s (delivery %d/%d): %r",
                    stream, envelope.cursor.entry_id, envelope.deliveries, limit, exc,
                )
            return
        await self._client.xack(stream, group, envelope.cursor.entry_id)

    async def dead_letter(self, stream: str, group: str, consumer: str, envelope: Envelope, error: str) -> None:
        """Copy ``envelope`` to ``<stream>:dlq`` with ``error`` and ack it on ``stream``."""
        log.error("bus: dead-lettering %s %s after %d deliveries: %s",
                  stream, envelope.cursor.entry_id, envelope.deliveries, error)
        fields: dict[str, str | bytes | int] = {
            "id": envelope.id,
            "type": envelope.type,
            "subject": envelope.subject,
            "seq": envelope.seq,
            "traceparent": envelope.traceparent,
            "epoch": envelope.epoch,
            "time": envelope.time,
            "data": envelope.data,
            "dlq_error": error,
            "dlq_deliveries": envelope.deliveries,
            "dlq_source_stream": stream,
            "dlq_source_cursor": str(envelope.cursor),
            "dlq_group": group,
            "dlq_consumer": consumer,
            "dlq_time": int(time.time() * 1000),
        }
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(dlq_stream(stream), fields, maxlen=self.config.maxlen or None, approximate=True)
            pipe.xack(stream, group, envelope.cursor.entry_id)
            await pipe.execute()

    async def dead_letters(self, stream: str, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` entries of ``<stream>:dlq``."""
        entries = await self._client.xrange(dlq_stream(stream), count=count)
        letters = []
        for _entry_id, fields in entries:
            source = Cursor.parse(_text(fields.get(b"dlq_source_cursor")))
            deliveries = int(fields.get(b"dlq_deliveries") or 0)
            letters.append(
                DeadLetter(
                    envelope=decode_entry(stream, source.entry_id, fields, deliveries),
                    error=_text(fields.get(b"dlq_error")),
                    deliveries=deliveries,
                    source_stream=_text(fields.get(b"dlq_source_stream")),
                    source_cursor=source,
                    group=_text(fields.get(b"dlq_group")),
                    consumer=_text(fields.get(b"dlq_consumer")),
                )
            )
        return letters
