"""Subscriptions: per-subscriber readers over topic streams, and the hub that owns them.

A :class:`Subscription` has one reader task that XREADs all its topic streams at once
(one Redis connection per subscription), checks each entry against the subscription's
position in that topic (epoch and sequence) and queues ``SubscribeResponse`` items on a
bounded queue. When the queue is full the subscriber is too slow: the subscription
ends with :class:`ResourceExhausted`. When the :class:`Hub` closes (server shutdown)
every subscription ends with :class:`Unavailable`.

History loss is reported with a ``HistoryLost`` item in place of the missing messages:

* EPOCH_CHANGED — the topic's epoch differs from the position's (seen on an entry, at
  resume, or by the periodic epoch check that also catches an idle restarted store);
  delivery continues with the new epoch's retained history.
* RETENTION_EXCEEDED — the next retained entry's sequence is beyond position + 1.
* UNKNOWN_CURSOR — a resumed position lies beyond the newest message of its epoch;
  delivery continues with the retained history.

Subscriber counts are kept in process (:class:`Hub`) and written to Redis per instance
with an expiry (:meth:`TopicStore.write_presence`), so counts of a dead instance vanish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agentforge.realtime.v1 import message_pb2, request_response_pb2
from services.realtime.config import RealtimeConfig
from services.realtime.cursor import Position, encode_cursor
from services.realtime.store import Entry, TopicStore
from services.realtime.topics import TopicPattern
from services.shared.bus import Backoff
from services.shared.errors import ForgeError, ResourceExhausted, Unavailable

__all__ = ["Hub", "Subscription", "SubscriptionSpec"]

log = logging.getLogger(__name__)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, OSError)
try:  # redis-py's own connection errors are not OSError subclasses
    from redis import exceptions as _redis_errors

    _CONNECTION_ERRORS += (_redis_errors.ConnectionError, _redis_errors.TimeoutError)
except ImportError:  # pragma: no cover
    pass

_MESSAGE_TYPE = message_pb2.Message.DESCRIPTOR.full_name
_Reason = message_pb2.HistoryLossReason
_Item = tuple[request_response_pb2.SubscribeResponse, str]


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """What a client asked for (already validated)."""

    topics: tuple[str, ...]
    patterns: tuple[TopicPattern, ...]
    #: Decoded resume cursor; None when the request had none.
    cursor: dict[str, Position] | None
    from_beginning: bool


class _Stop(Exception):
    """The reader must stop (the subscription already failed)."""


def message_item(entry: Entry, cursor: str) -> request_response_pb2.SubscribeResponse:
    """The ``SubscribeResponse`` carrying one stored entry."""
    msg = message_pb2.Message()
    if entry.type == _MESSAGE_TYPE:
        msg.ParseFromString(entry.data)
    else:  # written to the stream by someone else than Publish: pass it through
        msg.payload.type_url = f"type.googleapis.com/{entry.type}"
        msg.payload.value = entry.data
    msg.topic = entry.topic
    msg.cursor = cursor
    msg.epoch = entry.epoch
    msg.sequence = entry.seq
    if not msg.HasField("publish_time"):
        msg.publish_time.FromMilliseconds(entry.time_ms)
    return request_response_pb2.SubscribeResponse(message=msg)


class Subscription:
    """One live subscription; iterate with :meth:`next`."""

    def __init__(self, hub: Hub, spec: SubscriptionSpec) -> None:
        self._hub = hub
        self._store = hub.store
        self._config = hub.config
        self._spec = spec
        self.positions: dict[str, Position] = {}
        self._resumed: set[str] = set()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=self._config.queue_size)
        self._error: ForgeError | None = None
        self._ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Resume point after the last item handed out by :meth:`next`.
        self.cursor = ""

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Resolve start positions, register the topics, start reading."""
        spec = self._spec
        await self._store.register(spec.topics)
        topics = list(spec.topics)
        for pattern in spec.patterns:
            topics += [t for t in await self._store.matching(pattern) if t not in topics]
        for topic in topics:
            if spec.cursor is not None and topic in spec.cursor:
                self.positions[topic] = spec.cursor[topic]
                self._resumed.add(topic)
            elif spec.cursor is not None and topic not in spec.topics:
                # A pattern topic the cursor does not know was created after it was issued.
                self.positions[topic] = await self._store.head(topic)
            elif spec.from_beginning and spec.cursor is None:
                self.positions[topic] = await self._store.head(topic)
            else:
                self.positions[topic] = await self._store.tail(topic)
        for topic in self.positions:
            self._hub.attach(topic)
        self.cursor = encode_cursor(self.positions)
        self._task = asyncio.create_task(self._run(), name="realtime-subscription")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for topic in self.positions:
            self._hub.detach(topic)
        self.positions = {}

    def fail(self, error: ForgeError) -> None:
        """End the subscription with ``error`` (raised by the next :meth:`next`)."""
        if self._error is None:
            self._error = error
        self._ended.set()

    # -- consumer side ----------------------------------------------------------
    async def next(self, timeout: float) -> request_response_pb2.SubscribeResponse | None:
        """The next item, or None after ``timeout`` seconds without one."""
        if self._error is not None:
            raise self._error
        if self._queue.empty():
            getter = asyncio.ensure_future(self._queue.get())
            ender = asyncio.ensure_future(self._ended.wait())
            try:
                await asyncio.wait({getter, ender}, timeout=max(0.0, timeout),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                ender.cancel()
                if not getter.done():
                    getter.cancel()
            if self._error is not None:
                raise self._error
            if not getter.done() or getter.cancelled():
                return None
            item, cursor = getter.result()
        else:
            item, cursor = self._queue.get_nowait()
        self.cursor = cursor
        return item

    # -- reader side ------------------------------------------------------------
    def _emit(self, item: request_response_pb2.SubscribeResponse) -> None:
        try:
            self._queue.put_nowait((item, encode_cursor(self.positions)))
        except asyncio.QueueFull:
            self.fail(ResourceExhausted(
                f"subscriber is more than {self._config.queue_size} messages behind; "
                "resubscribe with the last cursor",
                reason="SLOW_CONSUMER",
            ))
            raise _Stop from None

    async def _lost(self, topic: str, reason: int, previous: Position, *, epoch: str | None = None) -> None:
        """Report lost history of ``topic`` and continue from its retained start."""
        current = epoch or await self._store.epoch(topic)
        self.positions[topic] = Position(current, "0-0", -1)
        first = await self._store.first_retained_seq(topic)
        lost = message_pb2.HistoryLost(
            topic=topic, reason=reason, previous_epoch=previous.epoch, epoch=current,
            resume_sequence=first,
        )
        self._emit_lost(lost)

    def _emit_lost(self, lost: message_pb2.HistoryLost) -> None:
        lost.cursor = encode_cursor(self.positions)
        self._emit(request_response_pb2.SubscribeResponse(history_lost=lost))

    async def _check_resumed(self) -> None:
        """Positions from the client's cursor: same epoch, and not beyond the newest message."""
        for topic in list(self._resumed):
            position = self.positions[topic]
            current = await self._store.epoch(topic)
            if position.epoch != current:
                await self._lost(topic, _Reason.HISTORY_LOSS_REASON_EPOCH_CHANGED, position, epoch=current)
                continue
            tail = await self._store.tail(topic)
            if position.seq > tail.seq or (position.seq >= 0 and position.entry_key > tail.entry_key):
                await self._lost(topic, _Reason.HISTORY_LOSS_REASON_UNKNOWN_CURSOR, position, epoch=current)
        self._resumed.clear()

    async def _check_epochs(self) -> None:
        topics = list(self.positions)
        epochs = await asyncio.gather(*(self._store.epoch(t) for t in topics))
        for topic, current in zip(topics, epochs, strict=True):
            position = self.positions[topic]
            if position.epoch != current:
                await self._lost(topic, _Reason.HISTORY_LOSS_REASON_EPOCH_CHANGED, position, epoch=current)

    async def _rescan(self) -> None:
        for pattern in self._spec.patterns:
            for topic in await self._store.matching(pattern):
                if topic not in self.positions:
                    # Created after the subscription started: deliver it from its start.
                    self.positions[topic] = await self._store.head(topic)
                    self._hub.attach(topic)

    async def _deliver(self, entries: Sequence[Entry]) -> None:
        skip: set[str] = set()
        for entry in entries:
            position = self.positions.get(entry.topic)
            if position is None or entry.topic in skip:
                continue
            if entry.epoch != position.epoch:
                current = await self._store.epoch(entry.topic)
                if current != position.epoch:
                    await self._lost(entry.topic, _Reason.HISTORY_LOSS_REASON_EPOCH_CHANGED, position,
                                     epoch=current)
                    skip.add(entry.topic)  # re-read the new epoch from its start
                continue
            if entry.seq <= position.seq:
                continue
            if position.seq >= 0 and entry.seq > position.seq + 1:
                self.positions[entry.topic] = Position(position.epoch, position.entry_id, entry.seq - 1)
                self._emit_lost(message_pb2.HistoryLost(
                    topic=entry.topic,
                    reason=_Reason.HISTORY_LOSS_REASON_RETENTION_EXCEEDED,
                    previous_epoch=position.epoch, epoch=position.epoch, resume_sequence=entry.seq,
                ))
            self.positions[entry.topic] = Position(entry.epoch, entry.entry_id, entry.seq)
            try:
                item = message_item(entry, "")
            except DecodeError:
                log.warning("realtime: undecodable entry %s in %s skipped", entry.entry_id, entry.topic)
                continue
            cursor = encode_cursor(self.positions)
            item.message.cursor = cursor
            try:
                self._queue.put_nowait((item, cursor))
            except asyncio.QueueFull:
                self._emit(item)  # raises after failing the subscription

    async def _run(self) -> None:
        config = self._config
        delays = Backoff().delays()
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + config.rescan_interval_s
        next_epoch_check = loop.time() + config.epoch_check_interval_s
        try:
            await self._check_resumed()
            while True:
                try:
                    now = loop.time()
                    if self._spec.patterns and now >= next_scan:
                        await self._rescan()
                        next_scan = now + config.rescan_interval_s
                    if now >= next_epoch_check:
                        await self._check_epochs()
                        next_epoch_check = now + config.epoch_check_interval_s
                    deadline = min(next_epoch_check, next_scan if self._spec.patterns else next_epoch_check)
                    block = max(1, min(config.block_ms, int((deadline - loop.time()) * 1000)))
                    entries = await self._store.read(self.positions, block_ms=block, count=100)
                    delays = Backoff().delays()
                except _CONNECTION_ERRORS as exc:
                    delay = next(delays)
                    log.warning("realtime: subscription lost Redis (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    next_epoch_check = 0.0  # the store may have restarted: compare epochs
                    continue
                await self._deliver(entries)
        except _Stop:
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            log.exception("realtime: subscription reader failed")
            self.fail(Unavailable(f"subscription failed: {type(exc).__name__}"))


class Hub:
    """Owns the live subscriptions of this process and their subscriber counts."""

    def __init__(self, store: TopicStore, config: RealtimeConfig) -> None:
        self.store = store
        self.config = config
        self._subscriptions: set[Subscription] = set()
        self._counts: Counter[str] = Counter()
        self._dirty = asyncio.Event()
        self._closed = False
        self._flusher: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def local_counts(self) -> dict[str, int]:
        return {t: n for t, n in self._counts.items() if n > 0}

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_presence(), name="realtime-presence")

    async def close(self) -> None:
        """End every subscription with UNAVAILABLE and withdraw this instance's counts."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            subscription.fail(Unavailable("the realtime server is shutting down; resubscribe with the last cursor"))
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(Exception):
            await self.store.drop_presence(self.config.instance_id)

    async def open(self, spec: SubscriptionSpec) -> Subscription:
        if self._closed:
            raise Unavailable("the realtime server is shutting down")
        subscription = Subscription(self, spec)
        self._subscriptions.add(subscription)
        try:
            await subscription.start()
        except BaseException:
            await self.release(subscription)
            raise
        return subscription

    async def release(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        await subscription.close()

    def attach(self, topic: str) -> None:
        self._counts[topic] += 1
        self._dirty.set()

    def detach(self, topic: str) -> None:
        self._counts[topic] -= 1
        if self._counts[topic] <= 0:
            del self._counts[topic]
        self._dirty.set()

    async def _flush_presence(self) -> None:
        period = self.config.presence_ttl_s / 3
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), period)
            self._dirty.clear()
            try:
                await self.store.write_presence(self.config.instance_id, self.local_counts(),
                                                self.config.presence_ttl_s)
            except _CONNECTION_ERRORS as exc:
                log.warning("realtime: could not write subscriber counts (%s)", exc)
                await asyncio.sleep(min(1.0, period))
                self._dirty.set()
            await asyncio.sleep(0.05)  # coalesce bursts of attach/detach

