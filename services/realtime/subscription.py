"""Subscriptions: watchers of the service's one fan-out, and the hub that owns them.

The realtime service reads its topic streams once: a
:class:`~services.shared.fanout.BusFanout` (a fixed number of reader connections, each
following many topic streams with one ``XREAD BLOCK``) hands every entry to the bounded
buffer of each :class:`Subscription` of its topic. A subscription never reads Redis with
a blocking call; it catches up from the retained history (short, non-blocking reads on
the fan-out's own small pool) when it starts, resumes, or after a gap, and otherwise
takes its entries from the buffer, checking each against its position in that topic
(epoch and sequence, so nothing is delivered twice).

Slow consumers: a subscriber whose buffer (``queue_size`` entries) overflows is ended
with RESOURCE_EXHAUSTED / ``SLOW_CONSUMER`` (the contract of ``Subscribe``): it
resubscribes with its last cursor and replays from the retained history. Other
subscribers of the topic never wait for it. When the :class:`Hub` closes (server
shutdown) every subscription ends with :class:`Unavailable`.

History loss is reported with a ``HistoryLost`` item in place of the missing messages:

* EPOCH_CHANGED — the topic's epoch differs from the position's (seen on an entry, at
  resume, or when the fan-out reports that Redis restarted or an epoch changed);
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
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agentforge.realtime.v1 import message_pb2, request_response_pb2
from services.realtime.config import RealtimeConfig
from services.realtime.cursor import Position, encode_cursor
from services.realtime.store import Entry, TopicStore
from services.realtime.topics import TopicPattern
from services.shared.bus import Backoff, Envelope
from services.shared.errors import ForgeError, ResourceExhausted, Unavailable
from services.shared.fanout import GAP_OVERFLOW, BusFanout, Gap, Watcher

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


#: Entries per topic and catch-up read.
_CATCH_UP_COUNT = 100


def _entry_of(topic: str, envelope: Envelope) -> Entry:
    return Entry(topic=topic, entry_id=envelope.cursor.entry_id, epoch=envelope.epoch, seq=envelope.seq,
                 type=envelope.type, time_ms=envelope.time, data=envelope.data)


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
        #: Topics to read from the retained history before taking live entries again.
        self._need: set[str] = set()
        #: Topics whose epoch must be compared with the store (after a gap).
        self._recheck: set[str] = set()
        self._ready: deque[_Item] = deque()
        self._watcher: Watcher[str, Envelope] | None = None
        self._error: ForgeError | None = None
        self._delays = Backoff().delays()
        self._next_scan = 0.0
        #: Pattern subscriptions: rescan the registry at the next step (after a gap in
        #: the ``topics.created`` stream, and once right after the watcher registered).
        self._rescan_due = False
        #: Topics announced as created that a pattern matches, not followed yet.
        self._created: list[str] = []
        #: Resume point after the last item handed out by :meth:`next`.
        self.cursor = ""

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        """Resolve start positions, register the topics, join the fan-out."""
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
        # Registered before the first catch-up read: nothing falls between the two.
        # Pattern subscriptions also follow the announcements of new topics, and rescan
        # once after registering (a topic created between the scan above and now).
        keys = [self._store.stream(t) for t in self.positions]
        if spec.patterns:
            keys.append(self._store.created_stream)
            self._rescan_due = True
        self._watcher = await self._hub.fanout.watch(keys, capacity=self._config.queue_size)
        self._need = set(self.positions)
        self._next_scan = asyncio.get_running_loop().time() + self._config.rescan_interval_s

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        for topic in self.positions:
            self._hub.detach(topic)
        self.positions = {}

    def fail(self, error: ForgeError) -> None:
        """End the subscription with ``error`` (raised by the next :meth:`next`)."""
        if self._error is None:
            self._error = error
        if self._watcher is not None:
            self._watcher.fail(error)

    # -- consumer side ----------------------------------------------------------
    async def next(self, timeout: float) -> request_response_pb2.SubscribeResponse | None:
        """The next item, or None after ``timeout`` seconds without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while not self._ready:
            if self._error is not None:
                raise self._error
            try:
                if await self._step(deadline):
                    continue
            except _CONNECTION_ERRORS as exc:
                # Redis away: keep the stream (heartbeats), retry, then re-check everything.
                delay = next(self._delays)
                log.warning("realtime: subscription lost Redis (%s); retrying in %.2fs", exc, delay)
                self._need |= set(self.positions)
                self._recheck |= set(self.positions)
                await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
            if loop.time() >= deadline and not self._ready:
                return None
        item, cursor = self._ready.popleft()
        self.cursor = cursor
        return item

    async def _step(self, deadline: float) -> bool:
        """One unit of work; True when it may have produced items (loop again at once)."""
        loop = asyncio.get_running_loop()
        assert self._watcher is not None
        if self._resumed:
            await self._check_resumed()
            return True
        if self._recheck:
            topics, self._recheck = self._recheck, set()
            await self._check_epochs(topics)
            return True
        if self._spec.patterns and (self._rescan_due or loop.time() >= self._next_scan):
            self._rescan_due = False
            await self._rescan()
            self._next_scan = loop.time() + self._config.rescan_interval_s
            return True
        if self._created:
            created, self._created = self._created, []
            await self._follow_new(created)
            return True
        if self._need:
            await self._catch_up()
            self._delays = Backoff().delays()
            return True
        wait_until = min(deadline, self._next_scan) if self._spec.patterns else deadline
        got = await self._watcher.get(wait_until - loop.time())
        if got is None:
            return False
        if isinstance(got, Gap):
            self._on_gap(got)
            return True
        created_stream = self._store.created_stream
        entries = []
        for stream, envelope in got:
            if stream == created_stream:
                if envelope.subject not in self.positions and self._matches(envelope.subject):
                    self._created.append(envelope.subject)
            else:
                entries.append(_entry_of(self._store.topic_of(stream), envelope))
        if entries:
            await self._deliver(entries, live=True)
        return True

    def _matches(self, topic: str) -> bool:
        return any(pattern.matches(topic) for pattern in self._spec.patterns)

    def _on_gap(self, gap: Gap) -> None:
        if gap.reason == GAP_OVERFLOW:
            self.fail(ResourceExhausted(
                f"subscriber is more than {self._config.queue_size} messages or "
                f"{self._config.queue_bytes // 2**20} MiB behind; "
                "resubscribe with the last cursor",
                reason="SLOW_CONSUMER",
            ))
            return
        if self._store.created_stream in gap.keys:
            self._rescan_due = True  # announcements of new topics may have been missed
        topics = {self._store.topic_of(str(k)) for k in gap.keys} & set(self.positions)
        self._recheck |= topics
        self._need |= topics

    async def _catch_up(self) -> None:
        """Read the retained history after the positions of the topics in ``_need``."""
        count = _CATCH_UP_COUNT
        topics = sorted(self._need)
        entries = await self._store.read({t: self.positions[t] for t in topics}, block_ms=None, count=count)
        per_topic = Counter(e.topic for e in entries)
        self._need -= {t for t in topics if per_topic[t] < count}
        await self._deliver(entries, live=False)

    # -- producing items ----------------------------------------------------------
    def _emit(self, item: request_response_pb2.SubscribeResponse) -> None:
        self._ready.append((item, encode_cursor(self.positions)))

    async def _lost(self, topic: str, reason: int, previous: Position, *, epoch: str | None = None) -> None:
        """Report lost history of ``topic`` and continue from its retained start."""
        current = epoch or await self._store.epoch(topic)
        self.positions[topic] = Position(current, "0-0", -1)
        self._need.add(topic)
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

    async def _check_epochs(self, topics: set[str]) -> None:
        topics_list = [t for t in topics if t in self.positions]
        epochs = await asyncio.gather(*(self._store.epoch(t) for t in topics_list))
        for topic, current in zip(topics_list, epochs, strict=True):
            position = self.positions[topic]
            if position.epoch != current:
                await self._lost(topic, _Reason.HISTORY_LOSS_REASON_EPOCH_CHANGED, position, epoch=current)

    async def _rescan(self) -> None:
        """Follow every registered topic a pattern matches that is not followed yet."""
        found: list[str] = []
        for pattern in self._spec.patterns:
            found += await self._store.matching(pattern)
        await self._follow_new(found)

    async def _follow_new(self, topics: Sequence[str]) -> None:
        """Follow topics created after the subscription started, from their start."""
        added = []
        for topic in topics:
            if topic not in self.positions and topic not in added:
                self.positions[topic] = await self._store.head(topic)
                self._hub.attach(topic)
                added.append(topic)
        if added and self._watcher is not None:
            await self._hub.fanout.add_keys(self._watcher, [self._store.stream(t) for t in added])
            self._need |= set(added)

    async def _deliver(self, entries: Sequence[Entry], *, live: bool) -> None:
        """Turn entries into items; ``live`` entries come from the fan-out buffer.

        A live entry that does not directly follow the position (its predecessor came
        before this subscription joined, or was dropped) is not delivered: the topic is
        caught up from the retained history instead, which tells real loss
        (RETENTION_EXCEEDED) from entries this subscription has not read yet.
        """
        skip: set[str] = set()
        for entry in entries:
            position = self.positions.get(entry.topic)
            if position is None or entry.topic in skip or (live and entry.topic in self._need):
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
                if live:
                    self._need.add(entry.topic)
                    skip.add(entry.topic)
                    continue
                self.positions[entry.topic] = Position(position.epoch, position.entry_id, entry.seq - 1)
                self._emit_lost(message_pb2.HistoryLost(
                    topic=entry.topic,
                    reason=_Reason.HISTORY_LOSS_REASON_RETENTION_EXCEEDED,
                    previous_epoch=position.epoch, epoch=position.epoch, resume_sequence=entry.seq,
                ))
            self.positions[entry.topic] = Position(entry.epoch, entry.entry_id, entry.seq)
            shared = len(self.positions) == 1
            key = (entry.topic, entry.epoch, entry.entry_id, entry.seq)
            ready = self._hub.items.get(key) if shared else None
            if ready is None:
                try:
                    item = message_item(entry, "")
                except DecodeError:
                    log.warning("realtime: undecodable entry %s in %s skipped", entry.entry_id, entry.topic)
                    continue
                cursor = encode_cursor(self.positions)
                item.message.cursor = cursor
                ready = (item, cursor)
                if shared:
                    self._hub.items.put(key, ready)
            self._ready.append(ready)


class _ItemCache:
    """The items of the latest entries for single-topic subscriptions (LRU).

    A subscription of one topic sends, for an entry, the same ``SubscribeResponse``
    (message and cursor) as every other subscription of that topic; it is built once
    and shared (never mutated after), instead of parsed and encoded per subscriber.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple[str, str, str, int], _Item] = OrderedDict()

    def get(self, key: tuple[str, str, str, int]) -> _Item | None:
        return self._items.get(key)

    def put(self, key: tuple[str, str, str, int], item: _Item) -> None:
        self._items[key] = item
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)


class Hub:
    """Owns the live subscriptions of this process, its fan-out and subscriber counts.

    ``store`` is the store subscriptions read through (on the fan-out's own pool).
    """

    def __init__(self, store: TopicStore, config: RealtimeConfig, fanout: BusFanout) -> None:
        self.store = store
        self.config = config
        self.fanout = fanout
        self.items = _ItemCache()
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
        self.fanout.start()
        self._flusher = asyncio.create_task(self._flush_presence(), name="realtime-presence")

    async def close(self) -> None:
        """End every subscription with UNAVAILABLE and withdraw this instance's counts."""
        if self._closed:
            return
        self._closed = True
        error = Unavailable("the realtime server is shutting down; resubscribe with the last cursor")
        for subscription in list(self._subscriptions):
            subscription.fail(error)
        await self.fanout.aclose(error)
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

