"""Topics on Redis Streams: the adapter between the realtime domain and Redis.

Keys (all under the configured prefix ``P``, default ``rt:``)::

    P t:<topic>          the topic's stream (EventBus stream: epoch, seq, MAXLEN ~)
    P registry           sorted set of every topic ever used (score 0 → ordered by id)
    P meta:<topic>       hash {epoch, create_time}: when the current epoch began
    P idem:<topic>:<id>  Publish idempotency record (24 h): "p" while publishing,
                         then the serialized PublishResponse
    P presence:<inst>    hash topic → live subscriptions on instance <inst> (expires)
    P instances          sorted set instance → expiry (unix s) of its presence hash

Every message is stored as an ``agentforge.realtime.v1.Message`` (topic, publisher,
publish_time, content) through :meth:`EventBus.publish` with ``subject = topic``, so
the bus assigns the per-topic sequence and the epoch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import wrappers_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis

from agentforge.realtime.v1 import message_pb2, request_response_pb2
from services.realtime.cursor import Position, encode_cursor
from services.realtime.topics import TopicPattern
from services.shared.bus import EventBus

__all__ = ["Entry", "IdempotencyConflict", "TopicInfo", "TopicStore", "timestamp_ms"]

_PENDING = b"p"
_DONE = b"r:"


class IdempotencyConflict(Exception):
    """A publish with the same request id is still in progress elsewhere."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry of a topic as read back (the bus wire fields)."""

    topic: str
    entry_id: str
    epoch: str
    seq: int
    type: str
    time_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TopicInfo:
    topic: str
    epoch: str
    message_count: int
    retained_count: int
    first_retained_seq: int
    last_publish_ms: int | None
    create_time_ms: int | None


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _entry(topic: str, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> Entry:
    return Entry(
        topic=topic,
        entry_id=_text(entry_id),
        epoch=_text(fields.get(b"epoch")),
        seq=int(fields.get(b"seq") or 0),
        type=_text(fields.get(b"type")),
        time_ms=int(fields.get(b"time") or 0),
        data=bytes(fields.get(b"data") or b""),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class TopicStore:
    """Publish to, read from and describe topics kept in Redis."""

    def __init__(self, bus: EventBus, *, prefix: str, idempotency_ttl_s: int) -> None:
        self.bus = bus
        self._prefix = prefix
        self._idem_ttl = idempotency_ttl_s

    @property
    def redis(self) -> Redis:
        return self.bus.client

    # -- key names --------------------------------------------------------------
    def stream(self, topic: str) -> str:
        return f"{self._prefix}t:{topic}"

    def topic_of(self, stream: str) -> str:
        return stream[len(self._prefix) + 2:]

    @property
    def _registry(self) -> str:
        return f"{self._prefix}registry"

    @property
    def created_stream(self) -> str:
        """Bus stream announcing every newly registered topic (entry subject = the topic).

        Pattern subscriptions follow it through the fan-out, so a topic created after
        they started reaches them as soon as it exists, without scanning the registry.
        """
        return f"{self._prefix}topics.created"

    def _meta(self, topic: str) -> str:
        return f"{self._prefix}meta:{topic}"

    def _idem(self, topic: str, request_id: str) -> str:
        return f"{self._prefix}idem:{topic}:{request_id}"

    def _presence(self, instance: str) -> str:
        return f"{self._prefix}presence:{instance}"

    @property
    def _instances(self) -> str:
        return f"{self._prefix}instances"

    # -- registry ---------------------------------------------------------------
    async def register(self, topics: Sequence[str]) -> None:
        """Record topics as used (first publish or subscription) and their epoch start."""
        if not topics:
            return
        epochs = await asyncio.gather(*(self.bus.epoch(self.stream(t)) for t in topics))
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic in topics:
                pipe.zadd(self._registry, {topic: 0}, nx=True)
            for topic in topics:
                pipe.hget(self._meta(topic), "epoch")
            replies = await pipe.execute()
        added = [t for t, n in zip(topics, replies[:len(topics)], strict=True) if n]
        known = replies[len(topics):]
        stale = [(t, e) for t, e, k in zip(topics, epochs, known, strict=True) if _text(k) != e]
        if stale:
            async with self.redis.pipeline(transaction=False) as pipe:
                for topic, epoch in stale:
                    pipe.hset(self._meta(topic), mapping={"epoch": epoch, "create_time": _now_ms()})
                await pipe.execute()
        for topic in added:
            # After the registry has it: a pattern subscription told of it finds it there.
            # Lost if Redis goes away right here; subscriptions rescan after a reconnect
            # and every ``rescan_interval_s`` as a safety net.
            await self.bus.publish(self.created_stream, wrappers_pb2.StringValue(value=topic), subject=topic)

    async def exists(self, topic: str) -> bool:
        return await self.redis.zscore(self._registry, topic) is not None

    async def matching(self, pattern: TopicPattern) -> list[str]:
        """Every registered topic that matches ``pattern``."""
        found: list[str] = []
        after: str | None = None
        while True:
            batch = await self.page(pattern, after, 500)
            found += batch
            if len(batch) < 500:
                return found
            after = batch[-1]

    async def page(self, pattern: TopicPattern | None, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` registered topics after ``after`` (ordered) matching ``pattern``."""
        prefix = pattern.literal_prefix if pattern else ""
        low = f"({after}" if after is not None and after >= prefix else (f"[{prefix}" if prefix else "-")
        high = f"[{prefix}\xff" if prefix else "+"
        out: list[str] = []
        batch_size = max(limit, 100)
        while len(out) < limit:
            batch = [_text(t) for t in await self.redis.zrangebylex(self._registry, low, high, 0, batch_size)]
            out += [t for t in batch if pattern is None or pattern.matches(t)]
            if len(batch) < batch_size:
                break
            low = f"({batch[-1]}"
        return out[:limit]

    # -- publish ----------------------------------------------------------------
    async def publish(
        self, message: message_pb2.Message, *, event_id: str | None = None
    ) -> request_response_pb2.PublishResponse:
        """Append ``message`` to its topic; returns where it landed."""
        topic = message.topic
        if not message.HasField("publish_time"):
            message.publish_time.GetCurrentTime()
        await self.register([topic])  # first: create_time precedes the first message
        cursor = await self.bus.publish(self.stream(topic), message, subject=topic, event_id=event_id)
        rows = await self.redis.xrange(self.stream(topic), min=cursor.entry_id, max=cursor.entry_id, count=1)
        seq = int(rows[0][1].get(b"seq") or 0) if rows else 0
        return request_response_pb2.PublishResponse(
            topic=topic,
            sequence=seq,
            epoch=cursor.epoch,
            publish_time=message.publish_time,
            cursor=encode_cursor({topic: Position(cursor.epoch, cursor.entry_id, seq)}),
        )

    async def publish_once(
        self, message: message_pb2.Message, request_id: str
    ) -> tuple[request_response_pb2.PublishResponse, bool]:
        """Publish unless ``request_id`` was already used for this topic.

        Returns the (first) response and whether this call published. A concurrent
        publish with the same id still in flight raises :class:`IdempotencyConflict`.
        """
        key = self._idem(message.topic, request_id)
        for _ in range(50):
            if await self.redis.set(key, _PENDING, nx=True, ex=60):
                break
            stored = await self.redis.get(key)
            if stored is not None and stored.startswith(_DONE):
                return request_response_pb2.PublishResponse.FromString(stored[len(_DONE):]), False
            await asyncio.sleep(0.05)
        else:
            raise IdempotencyConflict(f"publish {request_id} to {message.topic} is in progress")
        try:
            response = await self.publish(message, event_id=request_id)
        except BaseException:
            await self.redis.delete(key)
            raise
        await self.redis.set(key, _DONE + response.SerializeToString(), ex=self._idem_ttl)
        return response, True

    # -- positions and reading --------------------------------------------------
    async def epoch(self, topic: str) -> str:
        return await self.bus.epoch(self.stream(topic))

    async def tail(self, topic: str) -> Position:
        """Position of the newest message (live start: deliver only what comes next)."""
        epoch = await self.epoch(topic)
        last = await self.redis.xrevrange(self.stream(topic), count=1)
        if not last:
            return Position(epoch, "0-0", 0)
        entry = _entry(topic, *last[0])
        if entry.epoch != epoch:  # restarted between the two calls
            return Position(epoch, "0-0", 0)
        return Position(epoch, entry.entry_id, entry.seq)

    async def head(self, topic: str) -> Position:
        """Start of the retained history (deliver everything retained)."""
        return Position(await self.epoch(topic), "0-0", -1)

    async def first_retained_seq(self, topic: str) -> int:
        first = await self.redis.xrange(self.stream(topic), count=1)
        return _entry(topic, *first[0]).seq if first else 0

    async def read(self, positions: Mapping[str, Position], *, block_ms: int | None, count: int) -> list[Entry]:
        """Entries after each topic's position, at most ``count`` per topic."""
        if not positions:
            if block_ms:
                await asyncio.sleep(block_ms / 1000)
            return []
        streams = {self.stream(t): p.entry_id for t, p in positions.items()}
        client = self.redis if block_ms is None else self.bus.blocking_client
        reply = await client.xread(streams, count=count, block=block_ms)
        entries: list[Entry] = []
        for stream, rows in reply or []:
            topic = self.topic_of(_text(stream))
            entries += [_entry(topic, entry_id, fields) for entry_id, fields in rows]
        return entries

    # -- description ------------------------------------------------------------
    async def info(self, topic: str) -> TopicInfo:
        stream = self.stream(topic)
        epoch = await self.epoch(topic)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
            pipe.xrevrange(stream, count=1)
            pipe.hgetall(self._meta(topic))
            length, first, last, meta = await pipe.execute()
        first_entry = _entry(topic, *first[0]) if first else None
        last_entry = _entry(topic, *last[0]) if last else None
        create = meta.get(b"create_time") if _text(meta.get(b"epoch")) == epoch else None
        return TopicInfo(
            topic=topic,
            epoch=epoch,
            message_count=last_entry.seq if last_entry else 0,
            retained_count=int(length),
            first_retained_seq=first_entry.seq if first_entry else 0,
            last_publish_ms=last_entry.time_ms if last_entry else None,
            create_time_ms=int(create) if create else None,
        )

    # -- presence (subscriber counts) -------------------------------------------
    async def write_presence(self, instance: str, counts: Mapping[str, int], ttl_s: float) -> None:
        """Replace this instance's subscriber counts; they expire after ``ttl_s``."""
        key = self._presence(instance)
        live = {t: n for t, n in counts.items() if n > 0}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if live:
                pipe.hset(key, mapping=live)
                pipe.pexpire(key, int(ttl_s * 1000))
                pipe.zadd(self._registry, {t: 0 for t in live}, nx=True)
            pipe.zadd(self._instances, {instance: time.time() + ttl_s})
            pipe.zremrangebyscore(self._instances, "-inf", time.time())
            await pipe.execute()

    async def drop_presence(self, instance: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._presence(instance))
            pipe.zrem(self._instances, instance)
            await pipe.execute()

    async def subscriber_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """Live subscriptions per topic, summed over every live instance."""
        instances = [_text(i) for i in await self.redis.zrangebyscore(self._instances, time.time(), "+inf")]
        counts = dict.fromkeys(topics, 0)
        if not instances or not topics:
            return counts
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.hmget(self._presence(instance), list(topics))
            replies = await pipe.execute()
        for values in replies:
            for topic, value in zip(topics, values, strict=True):
                counts[topic] += int(value or 0)
        return counts


def timestamp_ms(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts
