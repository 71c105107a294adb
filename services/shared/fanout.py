"""One fan-out per service: a source read once, delivered to every local watcher.

Every server stream of the mesh (``Subscribe``, ``WatchTrainingJob``, ``WatchPhaseRun``,
``WatchAlerts``, ``WatchSystemHealth``) is a *watcher* of one or more *keys* (a topic's
bus stream, a job's event stream, a run id, ``"alerts"``, ``"health"``). Watchers never
read the source themselves. One :class:`Fanout` per source hands each item to the
bounded buffer of every watcher of its key:

* :class:`Fanout` — the in-process hub. A producer in the same process (the forge saga,
  the alert manager, the health watcher) calls :meth:`Fanout.publish`.
* :class:`BusFanout` — a :class:`Fanout` fed from Redis Streams by a fixed number of
  reader tasks (``readers``, default 2), each with **one dedicated connection** that
  follows *all* its keys with one ``XREAD BLOCK``. Keys are spread over the readers by
  hash. The number of Redis connections therefore does not grow with watchers or keys:
  ``readers`` blocking connections plus the bounded pool of the :class:`EventBus`
  passed in for the short, non-blocking catch-up reads of the watchers
  (:attr:`BusFanout.bus`). Unary RPCs use the service's own bus (another pool), so they
  never wait behind streams for a connection.

Watcher protocol (the same for every service)::

    watcher = await fanout.watch(keys)        # 1. register: from now on nothing is missed
    ... read the store after your cursor ...  # 2. catch up (replay) from the source of truth
    while True:
        got = await watcher.get(timeout)      # 3. live items, in source order, batched
        if isinstance(got, Gap): ...          #    re-read the store after your last position
        elif got is None: ... heartbeat ...   #    nothing within ``timeout``
        else: for key, item in got: ...       #    skip what the catch-up already delivered

Items are delivered at least once across catch-up and live delivery; watchers drop
what they already sent by their own position (sequence / entry id), which every stream
of the mesh carries.

Slow-consumer policy. A watcher's buffer holds at most ``capacity`` items (and, where
``max_bytes`` is set, at most that many bytes of them). When an item
arrives for a full buffer, the buffer is **dropped** (its memory freed at once), no more
items are buffered for that watcher, and its next :meth:`Watcher.get` returns a
:class:`Gap` with reason ``overflow``. The producer never waits and the other watchers
never notice. The watch then resumes from the store by its cursor (training, forge,
alerts: the client sees nothing but an uninterrupted, in-order stream; health: a fresh
full snapshot) or, where the API contract says so (realtime ``Subscribe``), ends the
stream with RESOURCE_EXHAUSTED / ``SLOW_CONSUMER`` so the client resubscribes with its
last cursor. A :class:`BusFanout` reader that lost Redis (or sees a stream's epoch
change) sends every watcher of the affected keys a :class:`Gap` with reason
``reconnect`` / ``epoch`` as well: the store is then the only safe place to resume from.

Memory per watcher is therefore bounded by ``capacity`` items (references to items
shared by all watchers of a key: an entry is decoded once per process, not once per
watcher). :meth:`Fanout.close` ends every watcher at once with an error (shutdown).

Metrics (when a Prometheus registry is given): ``agentforge_fanout_watchers``,
``agentforge_fanout_buffered_items`` (gauges), ``agentforge_fanout_items_total``
(items offered to watchers) and ``agentforge_fanout_gaps_total{reason}`` (counters),
all labelled ``fanout`` with the fan-out's name.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.shared.bus import BusConfig, Envelope, EventBus, _raise_if_cancelling, decode_entry
from services.shared.errors import Unavailable

__all__ = [
    "BusFanout",
    "Fanout",
    "FanoutClosed",
    "Gap",
    "GAP_EPOCH",
    "GAP_OVERFLOW",
    "GAP_RECONNECT",
    "Watcher",
]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: The watcher's buffer overflowed: it fell more than ``capacity`` items behind.
GAP_OVERFLOW = "overflow"
#: The reader lost Redis and reconnected: items may have been missed.
GAP_RECONNECT = "reconnect"
#: A followed stream's epoch changed (Redis restarted without persistence).
GAP_EPOCH = "epoch"

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    OSError,
)


class FanoutClosed(Unavailable):
    """The fan-out was closed (service shutdown) without a more specific error: the
    stream ends UNAVAILABLE and the client resumes with its last cursor."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Items for this watcher were dropped: resume from the store after your position.

    ``keys`` are the affected keys (all of the watcher's keys for ``overflow``).
    """

    reason: str
    keys: frozenset[Hashable]


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Watcher(Generic[K, T]):
    """One watcher: a bounded buffer of ``(key, item)`` fed by a :class:`Fanout`."""

    __slots__ = ("keys", "capacity", "max_bytes", "_bytes", "_fanout", "_buffer", "_gap", "_gap_keys",
                 "_waiter", "_error", "_closed")

    def __init__(self, fanout: Fanout[K, T], keys: frozenset[K], capacity: int, max_bytes: int | None) -> None:
        self.keys = keys
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._bytes = 0
        self._fanout = fanout
        self._buffer: deque[tuple[K, T]] = deque()
        self._gap: str | None = None
        self._gap_keys: set[K] = set()
        #: The future :meth:`get` is waiting on, if it is (set by the producer side).
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False

    # -- producer side (called by the fan-out, never blocks) ----------------------
    def _offer(self, key: K, item: T) -> None:
        if self._gap == GAP_OVERFLOW or self._closed:
            return  # the watcher re-reads everything from the store anyway
        size = self._fanout.size_of(item) if self.max_bytes is not None else 0
        over_bytes = self.max_bytes is not None and bool(self._buffer) and self._bytes + size > self.max_bytes
        if len(self._buffer) >= self.capacity or over_bytes:
            self._fanout._buffered -= len(self._buffer)
            self._buffer.clear()
            self._bytes = 0
            self._mark_gap(GAP_OVERFLOW, self.keys)
            return
        self._bytes += size
        self._buffer.append((key, item))
        self._fanout._buffered += 1
        self._wakeup()

    def _wakeup(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _mark_gap(self, reason: str, keys: Iterable[K]) -> None:
        if self._gap != GAP_OVERFLOW:  # overflow covers every key; keep it
            self._gap = reason
        self._gap_keys.update(keys)
        self._fanout._count_gap(reason)
        self._wakeup()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wakeup()

    # -- consumer side -------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Items waiting in the buffer."""
        return len(self._buffer)

    def fail(self, error: BaseException) -> None:
        """End this watcher: its next :meth:`get` raises ``error``."""
        self._fail(error)

    def take_gap(self) -> Gap | None:
        """The pending :class:`Gap` (and clear it), or None."""
        if self._gap is None:
            return None
        gap = Gap(self._gap, frozenset(self._gap_keys))
        self._gap = None
        self._gap_keys = set()
        return gap

    def drain(self) -> list[tuple[K, T]]:
        """Everything buffered now (possibly nothing), in arrival order."""
        items = list(self._buffer)
        self._buffer.clear()
        self._bytes = 0
        self._fanout._buffered -= len(items)
        return items

    async def get(self, timeout: float | None) -> list[tuple[K, T]] | Gap | None:
        """The buffered items (a non-empty batch), a :class:`Gap`, or None after ``timeout`` s.

        A gap comes before any items buffered after it. Raises the error the watcher or
        the fan-out was closed with.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._error is not None:
                raise self._error
            gap = self.take_gap()
            if gap is not None:
                return gap
            if self._buffer:
                return self.drain()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # One bare future, woken by the producer or by a timer: every delivery to
            # every watcher passes here, and asyncio.wait_for on an Event (a task, an
            # Event waiter and a timer per wait) cost ~3x as much per wake-up.
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if remaining is None else loop.call_later(remaining, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    async def close(self) -> None:
        """Stop receiving items (idempotent)."""
        if not self._closed:
            self._closed = True
            self._fanout._buffered -= len(self._buffer)
            self._buffer.clear()
            await self._fanout._detach(self)

    async def __aenter__(self) -> Watcher[K, T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Fanout(Generic[K, T]):
    """In-process fan-out of keyed items to bounded watcher buffers (see the module doc).

    Args:
        name: label of this fan-out in metrics and logs.
        capacity: default buffer size of a watcher, in items.
        max_bytes: default bound of a watcher's buffer in bytes as ``size_of`` counts them
            (None: items only). Items are shared by the watchers of a key, so this bounds
            what one slow watcher can keep alive, e.g. 1,000 entries of 256 KiB.
        size_of: the size of an item in bytes (for ``max_bytes``).
        registry: a ``prometheus_client.CollectorRegistry`` for the metrics, or None.
    """

    def __init__(self, name: str, *, capacity: int = 1000, max_bytes: int | None = None,
                 size_of: Callable[[T], int] | None = None, registry: object | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if max_bytes is not None and size_of is None:
            raise ValueError("max_bytes needs size_of")
        self.name = name
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.size_of: Callable[[T], int] = size_of or (lambda item: 0)
        self._watchers: dict[K, set[Watcher[K, T]]] = {}
        self._all: set[Watcher[K, T]] = set()
        self._starting: dict[K, asyncio.Future[None]] = {}
        self._buffered = 0
        self._closed: BaseException | None = None
        self.items_offered = 0
        self.gaps: dict[str, int] = {}
        self._metrics: _Metrics | None = None
        if registry is not None:
            self.bind_metrics(registry)

    def bind_metrics(self, registry: object) -> None:
        """Export this fan-out's metrics on ``registry`` (a Prometheus CollectorRegistry)."""
        if self._metrics is None:
            self._metrics = _Metrics.bind(self, registry)

    # -- introspection -------------------------------------------------------------
    @property
    def watcher_count(self) -> int:
        return len(self._all)

    @property
    def buffered_items(self) -> int:
        """Items buffered over all watchers (the fan-out's memory in items)."""
        return self._buffered

    def keys(self) -> list[K]:
        """Keys with at least one watcher."""
        return list(self._watchers)

    def watchers_of(self, key: K) -> int:
        return len(self._watchers.get(key, ()))

    def _count_gap(self, reason: str) -> None:
        self.gaps[reason] = self.gaps.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.gaps.labels(self.name, reason).inc()

    # -- watchers --------------------------------------------------------------------
    async def watch(self, keys: Iterable[K], *, capacity: int | None = None,
                    max_bytes: int | None = None) -> Watcher[K, T]:
        """Register a watcher of ``keys``; it receives every item published from now on."""
        if self._closed is not None:
            raise self._closed
        watcher: Watcher[K, T] = Watcher(self, frozenset(keys), capacity or self.capacity,
                                         max_bytes if max_bytes is not None else self.max_bytes)
        self._all.add(watcher)
        try:
            await self._follow(watcher, watcher.keys)
        except BaseException:
            await watcher.close()
            raise
        return watcher

    async def _follow(self, watcher: Watcher[K, T], keys: Iterable[K]) -> None:
        """Register ``watcher`` on ``keys``; return once the source follows all of them.

        The first watcher of a key makes the source follow it (:meth:`_keys_added`);
        later watchers of a key whose start is still in progress wait for it, so no
        watcher's catch-up can end before the live delivery of its keys begins.
        """
        keys = list(keys)
        new = [k for k in keys if k not in self._watchers]
        waiting = {id(f): f for k in keys if (f := self._starting.get(k)) is not None}
        for key in keys:
            self._watchers.setdefault(key, set()).add(watcher)
        if new:
            started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            started.add_done_callback(lambda f: f.cancelled() or f.exception())
            for key in new:
                self._starting[key] = started
            try:
                await self._keys_added(new)
            except BaseException as exc:
                started.set_exception(exc if isinstance(exc, Exception) else FanoutClosed("cancelled"))
                raise
            else:
                started.set_result(None)
            finally:
                for key in new:
                    if self._starting.get(key) is started:
                        del self._starting[key]
        for future in waiting.values():
            await asyncio.shield(future)

    async def add_keys(self, watcher: Watcher[K, T], keys: Iterable[K]) -> None:
        """Let ``watcher`` also follow ``keys`` (e.g. a topic matching its pattern appeared)."""
        added = [k for k in keys if k not in watcher.keys]
        if not added:
            return
        watcher.keys = watcher.keys | frozenset(added)
        await self._follow(watcher, added)

    async def _detach(self, watcher: Watcher[K, T]) -> None:
        self._all.discard(watcher)
        gone = []
        for key in watcher.keys:
            watchers = self._watchers.get(key)
            if watchers is None:
                continue
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[key]
                gone.append(key)
        if gone:
            self._keys_removed(gone)

    async def _keys_added(self, keys: Sequence[K]) -> None:
        """Hook: the first watcher of ``keys`` arrived (the bus reader follows them)."""

    def _keys_removed(self, keys: Sequence[K]) -> None:
        """Hook: the last watcher of ``keys`` left."""

    # -- producer side -----------------------------------------------------------------
    def publish(self, key: K, item: T) -> int:
        """Offer ``item`` to every watcher of ``key`` (never blocks); how many got it."""
        watchers = self._watchers.get(key)
        if not watchers:
            return 0
        for watcher in watchers:
            watcher._offer(key, item)
        self.items_offered += len(watchers)
        if self._metrics is not None:
            self._metrics.items.labels(self.name).inc(len(watchers))
        return len(watchers)

    def publish_many(self, key: K, items: Sequence[T]) -> None:
        watchers = self._watchers.get(key)
        if not watchers or not items:
            return
        for watcher in watchers:
            for item in items:
                watcher._offer(key, item)
        self.items_offered += len(watchers) * len(items)
        if self._metrics is not None:
            self._metrics.items.labels(self.name).inc(len(watchers) * len(items))

    def gap(self, keys: Iterable[K], reason: str) -> None:
        """Tell every watcher of ``keys`` that items may have been missed."""
        by_watcher: dict[Watcher[K, T], list[K]] = {}
        for key in keys:
            for watcher in self._watchers.get(key, ()):
                by_watcher.setdefault(watcher, []).append(key)
        for watcher, affected in by_watcher.items():
            watcher._mark_gap(reason, affected)

    def close(self, error: BaseException | None = None) -> None:
        """End every watcher with ``error`` (default :class:`FanoutClosed`); refuse new ones."""
        error = error or FanoutClosed(f"the {self.name} service is shutting down; resume with the last cursor")
        self._closed = error
        for watcher in list(self._all):
            watcher._fail(error)


class _Metrics:
    """The fan-out metrics of one registry, shared by every fan-out bound to it (a
    service with several fan-outs, e.g. monitoring's ``health`` and ``alerts``, exports
    one family each, with one ``fanout`` label value per fan-out)."""

    _by_registry: weakref.WeakKeyDictionary[object, _Metrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: object) -> None:
        from prometheus_client import Counter, Gauge

        self.watchers = Gauge("agentforge_fanout_watchers",
                              "Open watchers (server-stream subscribers) of the fan-out.",
                              ("fanout",), registry=registry)
        self.buffered = Gauge("agentforge_fanout_buffered_items",
                              "Items waiting in the watchers' buffers of the fan-out.",
                              ("fanout",), registry=registry)
        self.items = Counter("agentforge_fanout_items", "Items offered to watchers (one per watcher).",
                             ("fanout",), registry=registry)
        self.gaps = Counter("agentforge_fanout_gaps",
                            "Gap notices sent to watchers (overflow, reconnect, epoch).",
                            ("fanout", "reason"), registry=registry)

    @classmethod
    def bind(cls, fanout: Fanout[object, object], registry: object) -> _Metrics:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        metrics.watchers.labels(fanout.name).set_function(lambda: fanout.watcher_count)
        metrics.buffered.labels(fanout.name).set_function(lambda: fanout.buffered_items)
        metrics.items.labels(fanout.name)  # 0 from the start, not absent until the first item
        for reason in (GAP_OVERFLOW, GAP_RECONNECT, GAP_EPOCH):
            metrics.gaps.labels(fanout.name, reason)
        return metrics


# ============================================================================ bus
class _Reader:
    """One dedicated connection following many streams with one ``XREAD BLOCK``."""

    def __init__(self, owner: BusFanout, index: int) -> None:
        self.owner = owner
        self.index = index
        self.positions: dict[str, str] = {}
        self.epochs: dict[str, str] = {}
        self.wake_key = f"{owner.key_prefix}fanout:wake:{owner.instance}:{index}"
        self.wake_position = "0-0"
        self.client: Redis | None = None
        self.task: asyncio.Task[None] | None = None

    def _connect(self) -> Redis:
        config = self.owner.config
        # A client of its own with a pool of exactly one connection: the blocking read.
        return Redis.from_url(
            config.url,
            decode_responses=False,
            socket_connect_timeout=config.connect_timeout_s,
            socket_timeout=config.socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=1,
        )

    async def run(self) -> None:
        owner = self.owner
        delays = owner.config.backoff.delays()
        lost = False
        next_epoch_check = 0.0
        while True:
            try:
                if self.client is None:
                    self.client = self._connect()
                if lost:
                    await self._resync()
                    _raise_if_cancelling()
                    lost = False
                    delays = owner.config.backoff.delays()
                now = time.monotonic()
                if now >= next_epoch_check and self.positions:
                    await self._check_epochs()
                    _raise_if_cancelling()
                    next_epoch_check = now + owner.epoch_check_interval_s
                streams = {self.wake_key: self.wake_position, **self.positions}
                block = max(1, min(owner.config.block_ms, int((next_epoch_check - time.monotonic()) * 1000)))
                reply = await self.client.xread(streams, count=owner.count, block=block)
                _raise_if_cancelling()  # redis-py may swallow a cancellation (see bus.py)
            except asyncio.CancelledError:
                raise
            except _CONNECTION_ERRORS as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError() from None
                delay = next(delays)
                if not lost:
                    log.warning("fanout %s reader %d lost Redis (%s); retrying in %.2fs",
                                owner.name, self.index, exc, delay)
                lost = True
                await self._drop_client()
                await asyncio.sleep(delay)
                continue
            self._deliver(reply or [])

    def _deliver(self, reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]) -> None:
        owner = self.owner
        for name, rows in reply:
            stream = name.decode() if isinstance(name, bytes) else name
            if not rows:
                continue
            last = rows[-1][0]
            last_id = last.decode() if isinstance(last, bytes) else last
            if stream == self.wake_key:
                self.wake_position = last_id
                continue
            if stream not in self.positions:
                continue  # the last watcher left while we were reading
            self.positions[stream] = last_id
            envelopes = [decode_entry(stream, entry_id, fields) for entry_id, fields in rows if fields]
            if not envelopes:
                continue
            known = self.epochs.get(stream)
            if known is not None and envelopes[0].epoch != known:
                owner.gap([stream], GAP_EPOCH)
            self.epochs[stream] = envelopes[-1].epoch
            owner.publish_many(stream, envelopes)

    async def _check_epochs(self) -> None:
        """One MGET of the followed streams' epoch keys: a changed epoch is a gap."""
        assert self.client is not None
        streams = list(self.positions)
        values = await self.client.mget([f"{s}:epoch" for s in streams])
        changed = []
        for stream, value in zip(streams, values, strict=True):
            epoch = value.decode() if isinstance(value, bytes) else (value or "")
            known = self.epochs.get(stream)
            if known is None:
                if epoch:
                    self.epochs[stream] = epoch
                continue
            if epoch != known:
                # Redis lost this stream's history: read the new one from its start.
                changed.append(stream)
                if stream in self.positions:
                    self.positions[stream] = "0-0"
                if epoch:
                    self.epochs[stream] = epoch
                else:
                    self.epochs.pop(stream, None)
        if changed:
            owner = self.owner
            log.warning("fanout %s: epoch of %d stream(s) changed", owner.name, len(changed))
            owner.gap(changed, GAP_EPOCH)

    async def _resync(self) -> None:
        """After reconnecting: streams whose epoch changed restart at 0-0; every watcher gets a gap."""
        await self._check_epochs()
        self.owner.gap(list(self.positions), GAP_RECONNECT)

    async def _drop_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - the connection is broken anyway
                pass

    async def add(self, streams: Sequence[str]) -> None:
        """Follow ``streams`` from their newest entry; wake the blocked read."""
        bus = self.owner.bus
        async with bus.client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xrevrange(stream, count=1)
            for stream in streams:
                pipe.get(f"{stream}:epoch")
            replies = await pipe.execute()
        tails, epochs = replies[: len(streams)], replies[len(streams):]
        for stream, tail, epoch in zip(streams, tails, epochs, strict=True):
            if stream in self.positions:
                continue
            last = tail[0][0] if tail else b"0-0"
            self.positions[stream] = last.decode() if isinstance(last, bytes) else last
            if epoch:
                self.epochs[stream] = epoch.decode() if isinstance(epoch, bytes) else epoch
        async with bus.client.pipeline(transaction=False) as pipe:
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=8, approximate=False)
            pipe.pexpire(self.wake_key, 600_000)
            await pipe.execute()

    def remove(self, streams: Sequence[str]) -> None:
        for stream in streams:
            self.positions.pop(stream, None)
            self.epochs.pop(stream, None)


class BusFanout(Fanout[str, Envelope]):
    """A :class:`Fanout` of bus streams, read by ``readers`` dedicated connections.

    Args:
        name: label in metrics and logs; also part of the wake keys.
        config: how to reach Redis (``url``, timeouts, ``block_ms``, ``backoff``).
        readers: reader tasks, each one dedicated connection following its share of keys.
        catchup_connections: size of the pool of :attr:`bus`, used by :meth:`watch` and by
            watchers for their (non-blocking) catch-up reads; unary RPCs use their own.
        catchup_pool_timeout_s: how long a watcher's command waits for a free catch-up
            connection (a burst of thousands of new streams queues here rather than
            failing; past it the command fails with a connection error → UNAVAILABLE).
        capacity: default buffer size of a watcher, in entries.
        max_bytes: default bound of a watcher's buffer in bytes of entry data (16 MiB).
        count: ``XREAD COUNT`` per stream and read.
        epoch_check_interval_s: how often each reader compares its streams' epochs (one
            ``MGET``) to notice a restarted Redis on idle streams.
        key_prefix: prefix of the readers' wake streams (``<prefix>fanout:wake:…``).
        registry: Prometheus registry for the metrics, or None.

    Start with :meth:`start` (or ``async with``); :meth:`aclose` stops the readers,
    ends every watcher and closes the connections.
    """

    def __init__(
        self,
        name: str,
        config: BusConfig,
        *,
        readers: int = 2,
        catchup_connections: int = 8,
        catchup_pool_timeout_s: float = 30.0,
        capacity: int = 1000,
        max_bytes: int | None = 16 * 2**20,
        count: int = 500,
        epoch_check_interval_s: float = 1.0,
        key_prefix: str = "",
        registry: object | None = None,
    ) -> None:
        super().__init__(name, capacity=capacity, max_bytes=max_bytes, size_of=lambda e: len(e.data) + 200,
                         registry=registry)
        if readers < 1:
            raise ValueError("readers must be >= 1")
        self.config = config
        self.count = count
        self.epoch_check_interval_s = epoch_check_interval_s
        self.key_prefix = key_prefix
        self.instance = uuid.uuid4().hex[:12]
        #: The bus (bounded pool) for catch-up reads of this fan-out's watchers. Its
        #: commands are reads or idempotent writes (epoch, registry), so a command that
        #: met a connection Redis closed (restart) is retried once on a fresh one.
        self._catchup_client = Redis(
            connection_pool=BlockingConnectionPool.from_url(
                config.url,
                max_connections=catchup_connections,
                timeout=catchup_pool_timeout_s,
                decode_responses=False,
                socket_connect_timeout=config.connect_timeout_s,
                # Catch-up reads never block: a hung Redis fails them within the bus's
                # command timeout (UNAVAILABLE), like every other call of an RPC.
                socket_timeout=config.command_timeout_s,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[redis_errors.ConnectionError],
            ),
        )
        self.bus = EventBus(replace(config, max_connections=catchup_connections), client=self._catchup_client)
        self._readers = [_Reader(self, i) for i in range(readers)]
        self._started = False

    def _reader_of(self, stream: str) -> _Reader:
        return self._readers[zlib.crc32(stream.encode()) % len(self._readers)]

    @property
    def reader_count(self) -> int:
        return len(self._readers)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for reader in self._readers:
            # An empty context: readers serve every watcher, so they must not keep the
            # request id or the trace of the call whose first watcher started them.
            reader.task = asyncio.create_task(reader.run(), name=f"fanout-{self.name}-reader-{reader.index}",
                                              context=contextvars.Context())

    async def _keys_added(self, keys: Sequence[str]) -> None:
        by_reader: dict[_Reader, list[str]] = {}
        for key in keys:
            by_reader.setdefault(self._reader_of(key), []).append(key)
        await asyncio.gather(*(reader.add(streams) for reader, streams in by_reader.items()))

    def _keys_removed(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._reader_of(key).remove([key])

    async def aclose(self, error: BaseException | None = None) -> None:
        """End every watcher (with ``error``), stop the readers, close the connections."""
        from services.shared.tasks import cancel_and_wait

        self.close(error)
        await cancel_and_wait([r.task for r in self._readers if r.task is not None])
        for reader in self._readers:
            await reader._drop_client()
        await self._catchup_client.aclose(close_connection_pool=True)

    async def __aenter__(self) -> BusFanout:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
