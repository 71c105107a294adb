"""The job queue on Redis Streams, plus the other Redis keys of the training service.

One stream per priority (``training.jobs.high|normal|low``), consumer group ``workers``;
each entry is a bus envelope holding ``TrainingJobQueued``. A worker claims one entry at
a time, highest priority first: first entries whose owner stopped heartbeating
(XAUTOCLAIM with ``min_idle = heartbeat timeout``), then new ones (XREADGROUP ``>``).

While it runs the job the worker *touches* the entry every heartbeat (XCLAIM to itself
with JUSTID, which resets the idle time without counting a delivery, and only while it
still owns the entry), so idle time > heartbeat timeout means exactly "its worker is
gone". The entry is acked when the job is terminal or paused; a failed attempt
*releases* it (idle set past the timeout) so any worker retries it at once; a job out of
attempts goes to the bus's dead-letter stream ``<stream>:dlq``. An entry that is not a
``TrainingJobQueued`` naming a job (wrong type, bytes that do not parse, no job name) is a
poison message: retrying cannot fix its bytes, so the worker that claims it moves it to
``<stream>:dlq`` at once, with the reason, and claims the next entry.

The queue is a fast path that may forget (a Redis restart without persistence loses
streams and groups; an operator may XDEL or trim an entry). The job database is the
truth: each job records the id of its one current entry (``queue_entry``), workers drop
entries that are not it, and the reconciler (:mod:`services.training.reconciler`) puts
a job whose entry is gone back on the queue. ``NOGROUP`` recreates the group through the
bus's one recovery path (:meth:`EventBus.with_group`); acking or releasing an entry that
is gone is a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from agentforge.events.v1 import event_pb2
from agentforge.training.v1 import training_job_pb2 as job_pb
from google.protobuf.message import DecodeError
from redis import exceptions as redis_errors

from services.shared.bus import (Cursor, Envelope, EventBus, TypeMismatch, decode_entry, dlq_stream,
                                 is_nogroup)

__all__ = ["Claim", "EntryState", "JobQueue", "Keys", "GROUP", "PRIORITY_NAMES", "PoisonEntry", "entry_key"]

_log = logging.getLogger(__name__)


class PoisonEntry(ValueError):
    """A queue entry that is not a TrainingJobQueued naming a job."""

#: Where a job's queue entry is: delivered and not acked (``pending``), not delivered yet
#: (``waiting``), or neither (``gone``: acked, trimmed, deleted, or Redis restarted).
EntryState = Literal["pending", "waiting", "gone"]


def entry_key(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` → ``(1700000000000, 3)``, for ordering stream ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)

GROUP = "workers"
PRIORITY_NAMES = {job_pb.PRIORITY_HIGH: "high", job_pb.PRIORITY_NORMAL: "normal", job_pb.PRIORITY_LOW: "low"}
_ORDER = (job_pb.PRIORITY_HIGH, job_pb.PRIORITY_NORMAL, job_pb.PRIORITY_LOW)

# Touch an entry only while this consumer still owns it. KEYS: stream. ARGV: group, consumer, id.
_TOUCH_LUA = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# Make an owned entry claimable now. ARGV: group, consumer, id, idle ms.
_RELEASE_LUA = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key name of the training service, under an optional prefix."""

    prefix: str = ""

    def queue(self, priority: int) -> str:
        return f"{self.prefix}training.jobs.{PRIORITY_NAMES.get(priority, 'normal')}"

    def queues(self) -> list[str]:
        return [self.queue(p) for p in _ORDER]

    def job_events(self, job_id: str) -> str:
        """Per-job stream of TrainingJobEvent envelopes (what watchers follow live)."""
        return f"{self.prefix}training.job_events.{job_id}"

    @property
    def training_events(self) -> str:
        """``events.training``: state changes, progress and TrainingJobCompleted, for other
        services (the model registry's hand-off, the monitoring service's training alerts)."""
        return f"{self.prefix}events.training"

    def control(self, job_id: str, attempt: int) -> str:
        """Control requests for one attempt of a job (read by the worker running it)."""
        return f"{self.prefix}training.control.{job_id}.{attempt}"

    def job_heartbeat(self, job_id: str) -> str:
        return f"{self.prefix}training.heartbeat.job.{job_id}"

    def worker_heartbeat(self, worker: str) -> str:
        return f"{self.prefix}training.heartbeat.worker.{worker}"


@dataclass(frozen=True, slots=True)
class Claim:
    """A queue entry this worker owns."""

    stream: str
    envelope: Envelope
    message: event_pb2.TrainingJobQueued
    #: Times the group has delivered the entry (1 = first delivery).
    deliveries: int
    #: True when taken over from a consumer whose heartbeat lapsed.
    reclaimed: bool

    @property
    def entry_id(self) -> str:
        return self.envelope.cursor.entry_id

    @property
    def job_id(self) -> str:
        return self.message.training_job.rpartition("/")[2]


class _Poisoned(Exception):
    def __init__(self, stream: str, envelope: Envelope, error: PoisonEntry) -> None:
        super().__init__(str(error))
        self.stream, self.envelope, self.error = stream, envelope, error


class JobQueue:
    """Enqueue, claim, touch, release, ack and dead-letter job entries."""

    def __init__(self, bus: EventBus, keys: Keys, *, claim_idle_ms: int) -> None:
        self.bus = bus
        self.keys = keys
        self.claim_idle_ms = claim_idle_ms
        self._touch = bus.client.register_script(_TOUCH_LUA)
        self._release = bus.client.register_script(_RELEASE_LUA)
        self._groups_ready = False

    async def ensure_groups(self) -> None:
        for stream in self.keys.queues():
            await self.bus.ensure_group(stream, GROUP)
        self._groups_ready = True

    async def enqueue(self, job_name: str, priority: int, attempt: int, *, budget_s: float | None = None) -> Cursor:
        """Append a TrainingJobQueued entry; ``budget_s`` bounds retries while Redis is away."""
        message = event_pb2.TrainingJobQueued(training_job=job_name, priority=priority, attempt=attempt)
        return await self.bus.publish(self.keys.queue(priority), message, subject=job_name, budget_s=budget_s)

    async def claim(self, consumer: str) -> Claim | None:
        """The next entry for ``consumer``: lapsed ones first, then new, high priority first.

        A group that Redis forgot (``NOGROUP``) is recreated and the read repeated. A
        poison entry (:class:`PoisonEntry`) is dead-lettered and the next one claimed.
        """
        while True:
            try:
                return await self._claim_next(consumer)
            except _Poisoned as poisoned:
                _log.error("dead-lettering a poison queue entry", extra={
                    "stream": poisoned.stream, "entry": poisoned.envelope.cursor.entry_id,
                    "error": str(poisoned.error)})
                try:
                    await self.bus.dead_letter(poisoned.stream, GROUP, consumer, poisoned.envelope,
                                               f"poison entry, not retried: {poisoned.error}")
                except redis_errors.ResponseError as exc:
                    if not is_nogroup(exc):
                        raise

    async def _claim_next(self, consumer: str) -> Claim | None:
        if not self._groups_ready:
            await self.ensure_groups()
        client = self.bus.client
        for stream in self.keys.queues():
            reply = await self.bus.with_group(
                stream, GROUP, lambda stream=stream: client.xautoclaim(
                    stream, GROUP, consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=1))
            entries = [(i, f) for i, f in reply[1] if f]
            for deleted in reply[2] if len(reply) > 2 else []:
                await client.xack(stream, GROUP, deleted)
            if entries:
                entry_id, fields = entries[0]
                info = await client.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
                deliveries = int(info[0]["times_delivered"]) if info else 1
                return self._claim(stream, entry_id, fields, deliveries, reclaimed=True)
        for stream in self.keys.queues():
            reply = await self.bus.with_group(
                stream, GROUP, lambda stream=stream: client.xreadgroup(GROUP, consumer, {stream: ">"}, count=1))
            for _name, entries in reply or []:
                for entry_id, fields in entries:
                    if fields:
                        return self._claim(stream, entry_id, fields, 1, reclaimed=False)
        return None

    def _claim(self, stream: str, entry_id: bytes, fields: dict, deliveries: int, *, reclaimed: bool) -> Claim:
        envelope = decode_entry(stream, entry_id, fields, deliveries)
        try:
            message = envelope.unpack(event_pb2.TrainingJobQueued)
        except (TypeMismatch, DecodeError) as exc:
            raise _Poisoned(stream, envelope, PoisonEntry(f"not a TrainingJobQueued: {exc}")) from exc
        if not message.training_job.startswith("trainingJobs/") or not message.training_job.rpartition("/")[2]:
            raise _Poisoned(stream, envelope, PoisonEntry(
                f"names no training job ({message.training_job[:100]!r})"))
        return Claim(stream, envelope, message, deliveries, reclaimed)

    async def touch(self, claim: Claim, consumer: str) -> bool:
        """Reset the entry's idle time; False if ``consumer`` no longer holds it (another
        worker took it over, or the entry or its group is gone)."""
        try:
            return bool(await self._touch(keys=[claim.stream], args=[GROUP, consumer, claim.entry_id]))
        except redis_errors.ResponseError as exc:
            if is_nogroup(exc):
                return False
            raise

    async def release(self, claim: Claim, consumer: str) -> bool:
        """Let any worker claim the entry right away (it stays pending, not acked).

        False when ``consumer`` does not hold the entry any more (gone, or taken over):
        the caller must put the job back on the queue another way (:meth:`enqueue`).
        """
        idle = self.claim_idle_ms + 1000
        try:
            return bool(await self._release(keys=[claim.stream], args=[GROUP, consumer, claim.entry_id, idle]))
        except redis_errors.ResponseError as exc:
            if is_nogroup(exc):
                return False
            raise

    async def ack(self, claim: Claim) -> None:
        """Ack the entry; nothing to do when it or its group is gone."""
        try:
            await self.bus.client.xack(claim.stream, GROUP, claim.entry_id)
        except redis_errors.ResponseError as exc:
            if not is_nogroup(exc):
                raise

    async def dead_letter(self, claim: Claim, consumer: str, error: str) -> None:
        """Move the entry to ``<stream>:dlq`` (the bus's dead-letter format) and ack it."""
        try:
            await self.bus.dead_letter(claim.stream, GROUP, consumer, claim.envelope, error)
        except redis_errors.ResponseError as exc:
            if not is_nogroup(exc):
                raise

    async def entry_state(self, priority: int, entry_id: str) -> EntryState:
        """Where the entry ``entry_id`` of the ``priority`` queue is (see :data:`EntryState`)."""
        if not entry_id:
            return "gone"
        stream = self.queue_stream(priority)
        client = self.bus.client
        delivered: str | None = None
        try:
            pending = await client.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
            if pending:
                return "pending"
            groups = await client.xinfo_groups(stream)
            delivered = next((_str(g.get("last-delivered-id")) for g in groups if _str(g.get("name")) == GROUP),
                             None)
        except redis_errors.ResponseError as exc:
            if not (is_nogroup(exc) or "no such key" in str(exc).lower()):
                raise
        # No group (Redis restarted; the next claim recreates it from "0"): an entry still
        # in the stream will be delivered, so it is waiting.
        if delivered is not None and entry_key(entry_id) <= entry_key(delivered):
            return "gone"  # delivered and no longer pending: acked
        return "waiting" if await client.xrange(stream, min=entry_id, max=entry_id, count=1) else "gone"

    def queue_stream(self, priority: int) -> str:
        return self.keys.queue(priority or job_pb.PRIORITY_NORMAL)

    async def dead_letters(self, priority: int) -> list:
        return await self.bus.dead_letters(self.keys.queue(priority))

    @staticmethod
    def dlq_stream(stream: str) -> str:
        return dlq_stream(stream)


def _str(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
