"""The training domain: what each RPC does, without gRPC.

:class:`JobManager` validates, stores, enqueues, signals running jobs through their
control stream and serves watches (store replay after the cursor, then live events from
the job's bus stream, with the store as the source of truth for gaps).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.shared.authz import creator_subject, require_owner
from services.shared.bus import EventBus, TypeMismatch
from services.shared.fanout import BusFanout, Gap
from services.shared.context import remaining_seconds
from services.shared.dbthread import DatabaseThread
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange, Unavailable, as_domain_error
from services.training import mapping
from services.training.config import TrainingConfig
from services.training.cursor import MalformedCursor, WatchCursor
from services.training.downsample import lttb_indices
from services.training.engine import list_checkpoints
from services.training.queue import JobQueue, Keys
from services.training.store import CANCELLED, RUNNING, TERMINAL, JobRecord, Store, job_id_of
from services.shared.paging import decode_page_token, encode_page_token, query_fingerprint

__all__ = ["CursorExpired", "JobManager"]

_log = logging.getLogger("services.training.jobs")

_CONTROL_TTL_S = 24 * 3600
#: A watch without live events re-reads the store this often (s): a safety net for an
#: event that never reached the bus, and how a deleted job is noticed.
_WATCH_IDLE_CHECK_S = 2.0
_JOB_STREAM_TTL_S = 3600


class CursorExpired(OutOfRange):
    """The cursor belongs to an event history that no longer exists."""

    default_reason = "CURSOR_EXPIRED"


def _is_terminal(event: ev_pb.TrainingJobEvent) -> bool:
    return event.HasField("state_changed") and event.state_changed.to_state in TERMINAL


class JobManager:
    """Create, inspect, control and watch training jobs."""

    def __init__(self, config: TrainingConfig, store: Store, bus: EventBus, queue: JobQueue, keys: Keys,
                 *, fanout: BusFanout | None = None) -> None:
        self.config = config
        self.store = store
        self.bus = bus
        #: Feeds every WatchTrainingJob of this process from the job event streams.
        self.fanout = fanout or BusFanout("training", bus.config, key_prefix=keys.prefix)
        self.queue = queue
        self.keys = keys
        #: Runs every store call off the event loop, in order (one thread for the store;
        #: the reconciler uses it too).
        self.db = DatabaseThread("training-store")

    # ---------------------------------------------------------------- helpers
    def _budget(self, until: float | None = None) -> float:
        """Seconds a call may still spend waiting for Redis: ``enqueue_budget_s``, less if
        the RPC's deadline (keeping a quarter second to answer) or ``until`` (monotonic)
        is nearer."""
        budget = self.config.enqueue_budget_s
        left = remaining_seconds()
        if left is not None:
            budget = min(budget, max(0.0, left - 0.25))
        if until is not None:
            budget = min(budget, max(0.0, until - time.monotonic()))
        return budget

    async def _publish(self, events: Sequence[ev_pb.TrainingJobEvent], *, budget_s: float | None = None) -> None:
        """Send stored events to watchers (the job's event stream); best effort within
        ``budget_s`` overall (None: the bus's own budget per call). The store has them,
        and watchers resume from it. State changes reach ``events.training`` through the
        store's outbox (:class:`~services.shared.outbox.OutboxRelay`), not from here."""
        deadline = None if budget_s is None else time.monotonic() + budget_s

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        for event in events:
            try:
                await self.bus.publish(self.keys.job_events(job_id_of(event.training_job)), event,
                                       subject=event.training_job, budget_s=left())
                if _is_terminal(event):
                    await self.bus.client.expire(self.keys.job_events(job_id_of(event.training_job)),
                                                 _JOB_STREAM_TTL_S)
            except Exception as exc:  # noqa: BLE001 - the store has it; watchers poll the store too
                if isinstance(as_domain_error(exc), Unavailable):
                    _log.warning("publish skipped, Redis unavailable: %r", exc, extra={"job": event.training_job})
                    return
                _log.exception("publish failed", extra={"job": event.training_job})

    async def publish_events(self, events: Sequence[ev_pb.TrainingJobEvent]) -> None:
        """Best-effort publish of stored events (within ``enqueue_budget_s``)."""
        await self._publish(events, budget_s=self.config.enqueue_budget_s)

    async def enqueue(self, rec: JobRecord, *, budget_s: float | None = None) -> bool:
        """Put a QUEUED job on the queue and record its entry as the current one.

        Compare-and-set on the recorded entry: if someone else recorded another entry in
        the meantime, this one is stale and the worker that reads it drops it. False
        (logged) when Redis stayed unreachable for ``budget_s``: the job stays QUEUED in
        the database and the reconciler enqueues it later.
        """
        try:
            cursor = await self.queue.enqueue(rec.job.name, rec.job.spec.priority or job_pb.PRIORITY_NORMAL,
                                              rec.job.attempts + 1, budget_s=budget_s)
        except Exception as exc:  # noqa: BLE001 - only "Redis away" is expected here
            if not isinstance(as_domain_error(exc), Unavailable):
                raise
            _log.warning("could not enqueue %s now (%r); the reconciler will", rec.job.name, exc)
            return False
        return await self.db(self.store.set_queue_entry, rec.id, cursor.entry_id, expect_entry=rec.queue_entry)

    async def _publish_and_enqueue(self, events: Sequence[ev_pb.TrainingJobEvent], rec: JobRecord | None) -> None:
        """Publish ``events`` then enqueue ``rec`` (if given), within ONE budget: a
        Create/Resume never waits for Redis longer than ``enqueue_budget_s`` in all."""
        until = time.monotonic() + self._budget()
        if events:
            await self._publish(events, budget_s=self._budget(until))
        if rec is not None:
            await self.enqueue(rec, budget_s=self._budget(until))

    async def _signal(self, rec: JobRecord, action: str, **values: float) -> None:
        """Send a control request to the worker running the job's current attempt."""
        stream = self.keys.control(rec.id, rec.job.attempts)
        fields = {"action": action, **{k: repr(float(v)) for k, v in values.items()}}
        async with self.bus.client.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, fields, maxlen=1000, approximate=True)
            pipe.expire(stream, _CONTROL_TTL_S)
            await pipe.execute()

    async def recover_unqueued(self) -> int:
        """Enqueue QUEUED jobs whose create/resume died before reaching the queue."""
        records = await self.db(self.store.queued_without_entry)
        done = 0
        for rec in records:
            done += await self.enqueue(rec)
        return done

    # ---------------------------------------------------------------- RPCs
    async def create(self, job: job_pb.TrainingJob, job_id: str, request_id: str) -> job_pb.TrainingJob:
        engine_spec = mapping.validate_spec(job.spec, self.config.dataset_root_paths)
        mapping.check_device(job.spec)
        # Reads the dataset (bounded, cached): file I/O, off the loop.
        await asyncio.to_thread(mapping.check_dataset, engine_spec, job.spec)
        clean = job_pb.TrainingJob(display_name=job.display_name, labels=dict(job.labels), spec=job.spec,
                                   phase=job.phase, phase_run=job.phase_run, creator=creator_subject())
        rec, events, created = await self.db(self.store.create, clean, job_id or uuid.uuid4().hex[:16], request_id)
        # The job is durable now: Redis being away delays it (the reconciler enqueues it
        # later) but never fails or hangs the create, and a retry with the same
        # request_id returns this same job.
        enqueue = not rec.queue_entry and rec.state == job_pb.TRAINING_JOB_STATE_QUEUED
        await self._publish_and_enqueue(events if created else [], rec if enqueue else None)
        return (await self.db(self.store.get, rec.id)).job

    async def get(self, name: str) -> job_pb.TrainingJob:
        return (await self.db(self.store.get, job_id_of(name))).job

    async def list(self, *, page_size: int, page_token: str, states: Sequence[int], phase: str,
             label_selector: str) -> tuple[list[job_pb.TrainingJob], str]:
        labels: dict[str, str] = {}
        for pair in filter(None, label_selector.split(",")):
            key, _, value = pair.partition("=")
            labels[key] = value
        fingerprint = query_fingerprint("jobs", sorted(states), phase, sorted(labels.items()))
        before = decode_page_token(page_token, fingerprint, expect=int)
        size = page_size or 50
        records = await self.db(self.store.list, states=list(states), phase=phase, labels=labels,
                                before_seq=before, limit=size + 1)
        next_token = ""
        if len(records) > size:
            records = records[:size]
            next_token = encode_page_token(records[-1].seq, fingerprint)
        return [r.job for r in records], next_token

    async def worker_alive(self, rec: JobRecord) -> bool | None:
        """Whether the worker the database names for a RUNNING job still runs it: its
        job heartbeat key (refreshed every heartbeat, TTL = heartbeat timeout) names it.
        None when Redis cannot tell (unreachable)."""
        try:
            holder = await self.bus.client.get(self.keys.job_heartbeat(rec.id))
        except Exception as exc:  # noqa: BLE001
            if isinstance(as_domain_error(exc), Unavailable):
                return None
            raise
        holder_name = holder.decode() if isinstance(holder, bytes) else holder
        return bool(rec.job.worker) and holder_name == rec.job.worker

    async def _orphaned(self, rec: JobRecord) -> bool:
        """True when Redis says nobody holds this RUNNING job: its queue entry is not
        pending (a worker that merely stalls still holds its entry) and no worker
        heartbeats the job. False when held, or when Redis cannot tell."""
        if await self.worker_alive(rec) is not False:
            return False
        try:
            return await self.queue.entry_state(rec.job.spec.priority, rec.queue_entry) != "pending"
        except Exception as exc:  # noqa: BLE001
            if isinstance(as_domain_error(exc), Unavailable):
                return False
            raise

    async def _check_owner(self, name: str) -> None:
        """PermissionDenied when a trainer controls a job someone else created (the
        method's ``owner_scoped`` rule, :func:`services.shared.authz.require_owner`);
        NotFound for an unknown job. The creator never changes, so checking before the
        control's own transaction is exact."""
        job = (await self.db(self.store.get, job_id_of(name))).job
        require_owner(job.name, job.creator)

    async def cancel(self, name: str) -> job_pb.TrainingJob:
        """QUEUED/PAUSED: CANCELLED now. RUNNING: the flag is stored (the worker reads it
        from the database every heartbeat, and gets a control request at once); a RUNNING
        job that no live worker holds is CANCELLED here and now."""
        await self._check_owner(name)
        rec, event = await self.db(self.store.request_cancel, job_id_of(name))
        if event is not None:
            await self._publish([event], budget_s=self._budget())
            return rec.job
        if await self._orphaned(rec):
            try:
                rec, event = await self.db(self.store.transition, rec.id, CANCELLED,
                                           "cancelled by request; no worker held the job",
                                           expect_worker=rec.job.worker)
            except FailedPrecondition:  # a worker took it over meanwhile: it sees the flag
                return (await self.db(self.store.get, rec.id)).job
            await self._publish([event], budget_s=self._budget())
            return rec.job
        await self._signal_best_effort(rec, "cancel")
        return rec.job

    async def _signal_best_effort(self, rec: JobRecord, action: str) -> None:
        """A control request the worker would also find as a flag in the database."""
        try:
            await self._signal(rec, action)
        except Exception as exc:  # noqa: BLE001
            if not isinstance(as_domain_error(exc), Unavailable):
                raise
            _log.warning("control request %s for %s not sent (%r); the worker reads the flag", action,
                         rec.job.name, exc)

    async def pause(self, name: str) -> job_pb.TrainingJob:
        await self._check_owner(name)
        rec = await self.db(self.store.request_pause, job_id_of(name))
        await self._signal_best_effort(rec, "pause")
        return rec.job

    async def resume(self, name: str) -> job_pb.TrainingJob:
        await self._check_owner(name)
        rec, event = await self.db(self.store.resume, job_id_of(name))
        await self._publish_and_enqueue([event], rec)
        return (await self.db(self.store.get, rec.id)).job

    async def adjust(self, name: str, *, learning_rate: float | None, alpha: float | None,
                     lamb: float | None) -> job_pb.TrainingJob:
        await self._check_owner(name)
        values = {k: v for k, v in (("lr", learning_rate), ("alpha", alpha), ("lamb", lamb)) if v is not None}
        if not values:
            raise InvalidArgument("nothing to adjust", [("learning_rate", "set at least one of learning_rate, "
                                                         "grokfast_alpha, grokfast_lamb")])
        rec = await self.db(self.store.request_adjust, job_id_of(name), values)
        if rec.state == RUNNING:
            await self._signal(rec, "adjust", **values)
        return rec.job

    async def checkpoint(self, name: str) -> job_pb.TrainingJob:
        await self._check_owner(name)
        rec = await self.db(self.store.require_state, job_id_of(name), (RUNNING,), "checkpointed")
        await self._signal(rec, "checkpoint")
        return rec.job

    async def delete(self, name: str) -> None:
        job_id = job_id_of(name)
        await self._check_owner(name)
        await self.db(self.store.delete, job_id)
        await asyncio.to_thread(shutil.rmtree, self.config.run_dir(job_id), True)
        try:
            await self.bus.client.delete(self.keys.job_events(job_id))
        except Exception:  # noqa: BLE001 - the stream expires anyway
            _log.warning("could not delete the event stream of %s", name)

    async def metrics(self, name: str, max_points: int) -> job_pb.TrainingJobMetrics:
        """The job's metric history, each series LTTB-downsampled to ``max_points`` (0 = 1000).

        ``name`` is ``trainingJobs/{id}/metrics``; the answer's ``cursor`` resumes
        WatchTrainingJob right after the last event the series include.
        """
        job_id = job_id_of(name.removesuffix("/metrics"))
        limit = max_points or 1000
        last, progress, evals = await self.db(self.store.metric_points, job_id)
        # Downsampling and parsing up to 100,000s of rows: CPU work, off the loop too.
        return await asyncio.to_thread(self._metrics_message, job_id, limit, last, progress, evals)

    def _metrics_message(self, job_id: str, limit: int, last: int, progress: Sequence[tuple[int, int, float, bytes]],
                         evals: Sequence[tuple[int, int, float, bytes]]) -> job_pb.TrainingJobMetrics:
        out = job_pb.TrainingJobMetrics(name=f"trainingJobs/{job_id}/metrics", progress_count=len(progress),
                                        eval_count=len(evals), sequence=last)
        if last:
            out.cursor = WatchCursor(self.store.epoch, job_id, last).encode()
        for rows, target in ((progress, out.progress), (evals, out.evals)):
            keep = lttb_indices([r[1] for r in rows], [r[2] for r in rows], limit)
            for i in keep:
                target.add().ParseFromString(rows[i][3])
        return out

    async def list_checkpoints(self, parent: str, *, page_size: int, page_token: str) -> tuple[list[job_pb.Checkpoint], str]:
        job_id = job_id_of(parent)
        rec = await self.db(self.store.get, job_id)
        known = await self.db(self.store.checkpoints, job_id)
        found = []
        for info in reversed(list_checkpoints(self.config.run_dir(job_id))):
            ckpt = job_pb.Checkpoint()
            if info.step in known:
                ckpt.CopyFrom(known[info.step])
            else:  # written but its event not recorded yet (or by an older attempt)
                ckpt.name = f"{rec.job.name}/checkpoints/{info.step}"
                ckpt.step = info.step
                ckpt.uri = f"file://{info.path}"
                ckpt.create_time.FromNanoseconds(int(info.mtime * 1e9))
            ckpt.size_bytes = info.size_bytes
            found.append(ckpt)
        fingerprint = query_fingerprint("checkpoints", job_id)
        offset = decode_page_token(page_token, fingerprint, expect=int) or 0
        size = page_size or 50
        page = found[offset:offset + size]
        next_token = encode_page_token(offset + size, fingerprint) if offset + size < len(found) else ""
        return page, next_token

    # ---------------------------------------------------------------- watch
    def _start_after(self, job_id: str, cursor: str) -> int:
        if not cursor:
            return 0
        try:
            parsed = WatchCursor.decode(cursor)
        except MalformedCursor as exc:
            raise InvalidArgument("malformed cursor", [("cursor", str(exc))]) from None
        if parsed.job_id != job_id:
            raise InvalidArgument("cursor of another job", [("cursor", "the cursor belongs to another job")])
        if parsed.epoch != self.store.epoch:
            raise CursorExpired("the job's event history was reset; watch again without a cursor",
                                metadata={"epoch": self.store.epoch})
        return parsed.sequence

    async def watch(self, name: str, cursor: str) -> AsyncIterator[ev_pb.TrainingJobEvent]:
        """History after ``cursor``, then live events, until the terminal state event.

        Live events come from the service's one fan-out (:attr:`fanout`), never from a
        Redis read of this watcher's own. The store is the source of truth: the watch
        replays from it at the start, after a :class:`~services.shared.fanout.Gap`
        (buffer overflow, Redis reconnect or epoch change), when a live event does not
        follow the last one sent, and every ``_WATCH_IDLE_CHECK_S`` without events (which
        also notices a deleted job). Sequences make the merge exact: nothing twice,
        nothing skipped.
        """
        job_id = job_id_of(name)
        await self.db(self.store.get, job_id)  # NotFound before the stream starts
        after = self._start_after(job_id, cursor)
        self.fanout.start()
        watcher = await self.fanout.watch([self.keys.job_events(job_id)])  # before the store: no gap
        try:
            replay = True
            while True:
                if replay:
                    events = await self.db(self.store.events_after, job_id, after)
                    for event in events:
                        yield event
                        after = event.sequence
                        if _is_terminal(event):
                            return
                    if events:
                        continue  # more may follow (the store pages)
                    if after > 0 and await self._ended(job_id, after):
                        return
                    replay = False
                got = await watcher.get(_WATCH_IDLE_CHECK_S)
                if got is None or isinstance(got, Gap):
                    replay = True
                    continue
                for _stream, envelope in got:
                    try:
                        event = envelope.unpack(ev_pb.TrainingJobEvent)
                    except TypeMismatch:
                        continue
                    if event.sequence <= after:
                        continue
                    if event.sequence != after + 1:
                        replay = True
                        break
                    yield event
                    after = event.sequence
                    if _is_terminal(event):
                        return
        finally:
            await watcher.close()

    async def _ended(self, job_id: str, after: int) -> bool:
        """True when the job is terminal and the watcher has seen all its events."""
        try:
            rec = await self.db(self.store.get, job_id)
        except NotFound:
            raise NotFound(f"trainingJobs/{job_id} was deleted", reason="JOB_NOT_FOUND") from None
        return rec.state in TERMINAL and rec.last_sequence <= after
