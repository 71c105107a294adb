"""Worker processes: claim jobs from the queue, run the engine, report, heartbeat.

``worker_main(config, index)`` is the ``spawn`` target; everything that talks to Redis
or SQLite is created inside the child. Each worker runs one asyncio loop (queue, store,
bus, heartbeats, control) and the engine's :class:`Trainer` in a thread beside it:

- the trainer's ``on_event`` callback only hands events to the loop
  (``call_soon_threadsafe``), so the training thread never waits on I/O;
- every store call (SQLite: commits, reads under another process's write lock) runs on
  the store's own thread (:class:`~services.shared.dbthread.DatabaseThread`), in order,
  so the loop's heartbeats and control stream never wait on the database;
- control requests arrive on the job attempt's control stream
  (``training.control.<job>.<attempt>``), read with a blocking XREAD and applied through
  the engine's thread-safe :class:`TrainingControl`, which the trainer checks every step;
- every ``heartbeat_interval_s`` the worker touches its queue entry (see
  :mod:`services.training.queue`) and refreshes ``training.heartbeat.job.<job>`` and
  ``training.heartbeat.worker.<worker>`` (TTL = heartbeat timeout).

SIGTERM/SIGINT: a running job is checkpointed (engine pause) and put back on the queue
(RUNNING → QUEUED "worker shutting down; requeued"), then the process exits.

The database, not the queue, says who runs a job (``job.worker``, fenced on every write):

- an entry that is not the job's recorded ``queue_entry`` is stale (a duplicate
  enqueue, a superseded entry) and is acked without running anything;
- a worker whose entry touch fails (entry deleted or trimmed, or Redis restarted and
  forgot the group) asks the database who holds the job: if it still does, it goes on
  running the job without a queue entry (its job heartbeat key keeps it visibly alive
  for the reconciler); if another worker does, it stops;
- every heartbeat the worker also reads the job's cancel/pause flags from the database,
  so a cancel or pause reaches it even when its control request was lost with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from google.rpc import code_pb2, status_pb2

from services.shared.bus import BusConfig, EventBus
from services.shared.dbthread import DatabaseThread
from services.shared.errors import FailedPrecondition, NotFound, Unavailable, as_domain_error
from services.shared.logging import configure_logging
from services.shared.events import publish_events
from services.shared.tracing import configure_tracing, consumer_span, untraced
from services.training import mapping
from services.training.config import TrainingConfig
from services.training.queue import GROUP, Claim, JobQueue, Keys
from services.training.store import (CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, SUCCEEDED, TERMINAL,
                                     JobRecord, Store, now_ts)

__all__ = ["Worker", "engine_fingerprint", "worker_main"]

_log = logging.getLogger("services.training.worker")

#: How long one publish of stored events keeps retrying while Redis is away (s). The
#: store already has the events (watchers fall back to it), so the pump that stores the
#: next batch must not wait behind the bus's full publish budget.
_PUBLISH_BUDGET_S = 1.0


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the service process dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))


def engine_fingerprint() -> str:
    """Short sha256 of the engine's source files as this process imported them.

    Logged when a worker starts: workers spawned at different times run different engine
    code if it was edited in between, and then "same spec, same seed" no longer means the
    same losses. Different fingerprints in the ``worker started`` lines show it at once.
    """
    digest = hashlib.sha256()
    for name in sorted(n for n in sys.modules if n == "services.training.engine"
                       or n.startswith("services.training.engine.")):
        path = getattr(sys.modules[name], "__file__", None)
        if path:
            with contextlib.suppress(OSError), open(path, "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:12]


def worker_main(config: TrainingConfig, index: int, log_format: str = "json", log_level: str = "INFO") -> None:
    """Entry point of a spawned worker process."""
    _die_with_parent()
    configure_logging("training-worker", log_level, fmt=log_format)
    configure_tracing("training", process=f"training-worker-{index}")
    import torch

    torch.set_num_threads(config.threads_per_worker())
    asyncio.run(Worker(config, index).run())


class Worker:
    """One worker process's loop: claim → run → report, until told to stop."""

    def __init__(self, config: TrainingConfig, index: int) -> None:
        self.config = config
        self.name = f"worker-{index}-{os.getpid()}"
        #: The engine code this process runs (see :func:`engine_fingerprint`).
        self.engine = engine_fingerprint()
        self.keys = Keys(config.key_prefix)
        self.stopping = asyncio.Event()
        self.current: JobRun | None = None
        self.store: Store | None = None
        #: Runs every store call off the event loop, in order (heartbeats and the
        #: control stream keep running while a commit waits for the disk or a lock).
        self.db = DatabaseThread(f"training-store-{index}")
        self.bus: EventBus | None = None
        self.queue: JobQueue | None = None

    def _on_signal(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.request_shutdown()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        cfg = self.config
        self.store = Store(cfg.database_path)
        self.bus = EventBus(BusConfig(url=cfg.redis_url))
        self.queue = JobQueue(self.bus, self.keys, claim_idle_ms=int(cfg.heartbeat_timeout_s * 1000))
        beat = asyncio.create_task(self._heartbeat())
        _log.info("worker started", extra={"worker": self.name, "threads": cfg.threads_per_worker(),
                                           "engine": self.engine})
        try:
            while not self.stopping.is_set():
                try:
                    claim = await self.queue.claim(self.name)
                except Exception as exc:  # noqa: BLE001 - Redis down: back off, keep the worker
                    if isinstance(as_domain_error(exc), Unavailable):
                        _log.warning("claim failed, Redis unavailable: %r", exc)
                    else:
                        _log.exception("claim failed")
                    claim = None
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), 1.0)
                if claim is None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), cfg.poll_interval_s)
                    continue
                self.current = JobRun(self, claim)
                try:
                    await self.current.run()
                except Exception:  # noqa: BLE001 - one job's bookkeeping failure must not kill the worker
                    _log.exception("job run failed", extra={"job": claim.job_id})
                finally:
                    self.current = None
        finally:
            beat.cancel()
            with contextlib.suppress(Exception):
                await self.bus.client.delete(self.keys.worker_heartbeat(self.name))
            await self.bus.aclose()
            await self.db(self.store.close)
            self.db.close()
            _log.info("worker stopped", extra={"worker": self.name})

    async def _heartbeat(self) -> None:
        assert self.bus is not None
        ttl_ms = int(self.config.heartbeat_timeout_s * 1000)
        while True:
            job = self.current.claim.job_id if self.current else ""
            with contextlib.suppress(Exception):
                await self.bus.client.set(self.keys.worker_heartbeat(self.name),
                                          json.dumps({"pid": os.getpid(), "job": job}), px=ttl_ms)
            await asyncio.sleep(self.config.heartbeat_interval_s)

    # ---------------------------------------------------------------- publishing
    async def publish(self, event: ev_pb.TrainingJobEvent) -> None:
        """Send a stored event to watchers (per-job stream). Failures are logged: the
        store holds the event, and state changes reach ``events.training`` through the
        store's outbox (relayed by the service process), whatever happens here."""
        await self.publish_many([event])

    async def publish_many(self, events: Sequence[ev_pb.TrainingJobEvent],
                           serialized: Sequence[bytes] | None = None) -> None:
        """:meth:`publish` for stored events of ONE job, in order: one bus call (one
        round trip) for the per-job stream; ``serialized`` are their bytes if known.
        Progress also goes to ``events.training`` (one more call, best effort: a progress
        event lost while Redis is away is superseded by the next one; state changes go
        through the outbox), where the monitoring service judges the training alerts
        (stalled, diverged, grokking)."""
        assert self.bus is not None
        if not events:
            return
        job = events[0].training_job
        try:
            await self.bus.publish_many(self.keys.job_events(job.rpartition("/")[2]), events, subject=job,
                                        serialized=serialized, budget_s=_PUBLISH_BUDGET_S)
            progress = [e for e in events if e.HasField("progress")]
            await publish_events(self.bus, self.keys.training_events, progress, source="training",
                                 subject=job, budget_s=_PUBLISH_BUDGET_S)
        except Exception as exc:  # noqa: BLE001
            if isinstance(as_domain_error(exc), Unavailable):
                _log.warning("publish skipped, Redis unavailable (the events are stored): %r", exc,
                             extra={"job": job, "sequence": events[0].sequence})
            else:
                _log.exception("publish failed", extra={"job": job, "sequence": events[0].sequence})


def _status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message[:2000])


class JobRun:
    """One attempt of one job on this worker."""

    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.worker = worker
        self.claim = claim
        self.config = worker.config
        assert worker.store is not None and worker.queue is not None and worker.bus is not None
        self.store: Store = worker.store
        self.db = worker.db  # the store's thread: no SQLite call blocks this loop
        self.queue: JobQueue = worker.queue
        self.bus: EventBus = worker.bus
        self.job_id = claim.job_id
        self.control: Any = None
        self.shutdown = False
        self.user_pause = False
        self.lost = False
        #: The queue entry is gone but the database says this worker holds the job.
        self.detached = False
        self.attempt = 0
        self._metrics: dict[str, float] = {}
        self._done = False

    def request_shutdown(self) -> None:
        self.shutdown = True
        if self.control is not None:
            self.control.pause()

    # ---------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        """Run the claimed entry in a ``process training.jobs.<priority>`` span: a child
        of (and linked to) the span that enqueued it, so the job is part of the trace of
        the call that created it, and so is what it publishes (the registry's hand-off)."""
        envelope = self.claim.envelope
        with consumer_span(self.claim.stream, envelope.traceparent, message_id=envelope.id, group=GROUP,
                           subject=envelope.subject) as span:
            if span is not None and span.is_recording():
                span.set_attributes({"agentforge.training_job": self.claim.message.training_job,
                                     "agentforge.worker": self.worker.name,
                                     "messaging.message.delivery_count": self.claim.deliveries})
            await self._run()

    async def _run(self) -> None:
        name = self.worker.name
        try:
            rec = await self.db(self.store.get, self.job_id)
        except NotFound:  # deleted while queued
            await self.queue.ack(self.claim)
            return
        if rec.state in TERMINAL or rec.state == PAUSED:
            await self.queue.ack(self.claim)  # cancelled/paused while queued: stale entry
            return
        if rec.queue_entry and rec.queue_entry != self.claim.entry_id:
            # Not the job's current entry (enqueued twice, or superseded by the reconciler).
            _log.info("dropping a stale queue entry", extra={"job": self.job_id, "entry": self.claim.entry_id,
                                                              "current": rec.queue_entry})
            await self.queue.ack(self.claim)
            return
        takeover = rec.state == RUNNING
        if takeover and rec.failures + 1 >= self.config.max_attempts:
            await self._give_up(rec, f"worker {rec.job.worker or '?'} stopped heartbeating; "
                                     f"{rec.failures + 1} failed attempts")
            return
        pending: dict[str, float] = {}

        def start(r: JobRecord) -> None:
            nonlocal pending
            r.job.attempts += 1
            r.job.worker = name
            if not r.job.HasField("start_time"):
                r.job.start_time.CopyFrom(now_ts())
            r.queue_entry = self.claim.entry_id
            if takeover:
                r.failures += 1
            pending, r.pending_adjust = r.pending_adjust, {}

        reason = (f"worker heartbeat lapsed; resumed on {name}" if takeover else f"started on {name}")
        try:
            rec, event = await self.db(self.store.transition, self.job_id, RUNNING, reason, worker=name, mutate=start)
        except FailedPrecondition:
            await self.queue.ack(self.claim)
            return
        await self.worker.publish(event)
        self.attempt = rec.job.attempts
        await self._train(rec, pending)

    async def _train(self, rec: JobRecord, pending: dict[str, float]) -> None:
        from services.training.engine import Trainer, TrainingControl

        control = self.control = TrainingControl()
        if rec.cancel_requested:
            control.cancel()
        if rec.pause_requested:
            self.user_pause = True
            control.pause()
        if self.shutdown:
            control.pause()
        if "lr" in pending:
            control.set_lr(pending["lr"])
        if "alpha" in pending or "lamb" in pending:
            control.set_grokfast(pending.get("alpha"), pending.get("lamb"))

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def on_event(e: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, e)

        job = rec.job
        run_dir = self.config.run_dir(self.job_id)
        threads = self.config.threads_per_worker()

        def train() -> Any:
            spec = mapping.spec_from_proto(job.spec)
            trainer = Trainer(spec, run_dir, control, on_event, num_threads=threads)
            return trainer.run()

        pump = asyncio.create_task(self._pump(events, job.name, int(job.spec.max_steps)))
        with untraced():  # their Redis commands every heartbeat are not part of the job's trace
            beat = asyncio.create_task(self._heartbeat())
            listen = asyncio.create_task(self._listen(control))
        outcome, error = None, None
        try:
            outcome = await asyncio.to_thread(train)
        except Exception as exc:  # noqa: BLE001 - any engine failure is a failed attempt
            error = exc
        finally:
            events.put_nowait(None)
            await pump
            # Cancelling a task inside a redis-py call can be swallowed; the loops also
            # check ``_done`` so they end at their next turn either way.
            self._done = True
            for task in (beat, listen):
                task.cancel()
            await asyncio.wait([beat, listen], timeout=5)
            with contextlib.suppress(Exception):
                await self.bus.client.delete(self.worker.keys.job_heartbeat(self.job_id))
        if self.lost:
            _log.warning("stopped a job this worker no longer holds", extra={"job": self.job_id})
            return
        try:
            await self._finish(outcome, error)
        except FailedPrecondition as exc:  # fenced: another worker owns the job now
            _log.warning("job finished elsewhere: %s", exc, extra={"job": self.job_id})

    async def _finish(self, outcome: Any, error: BaseException | None) -> None:
        name = self.worker.name
        if error is not None:
            from services.training.engine import SpecError

            # A SpecError (bad spec, a dataset file gone, no CUDA on this worker) fails the
            # same way on every attempt: retrying cannot fix it, so the job FAILS now, and
            # its queue entry is acked, not dead-lettered (it is not a poison message).
            permanent = isinstance(error, SpecError)
            code = code_pb2.INVALID_ARGUMENT if permanent else code_pb2.INTERNAL
            status = _status(code, f"{type(error).__name__}: {error}")
            _log.warning("attempt failed: %s", error, extra={"job": self.job_id, "attempt": self.attempt,
                                                             "retryable": not permanent})
            rec = await self.db(self.store.get, self.job_id)
            if permanent or rec.failures + 1 >= self.config.max_attempts:
                await self._give_up(rec, status.message, status=status, expect_worker=name,
                                    dead_letter=not permanent)
                return

            def failed(r: JobRecord) -> None:
                r.failures += 1
                r.job.worker = ""

            _, event = await self.db(
                self.store.transition, self.job_id, QUEUED, f"attempt {self.attempt} failed: {status.message}; retrying",
                worker=name, error=None, expect_worker=name, mutate=failed)
            await self.worker.publish(event)
            await self._requeue()
            return
        status_name = outcome.status
        if status_name == "succeeded":
            metrics = {k: float(v) for k, v in outcome.metrics.items() if v is not None}

            def done(r: JobRecord) -> None:
                r.job.final_metrics.clear()
                r.job.final_metrics.update(metrics)

            # The hand-off (TrainingJobCompleted) goes into the outbox with the transition.
            rec, event = await self.db(self.store.transition, self.job_id, SUCCEEDED, "completed", worker=name,
                                       expect_worker=name, mutate=done, completed_step=outcome.step)
            await self.worker.publish(event)
            await self.queue.ack(self.claim)
        elif status_name == "cancelled":
            _, event = await self.db(self.store.transition, self.job_id, CANCELLED,
                                     f"cancelled by request at step {outcome.step}",
                                     worker=name, expect_worker=name)
            await self.worker.publish(event)
            await self.queue.ack(self.claim)
        elif self.user_pause or not self.shutdown:
            def paused(r: JobRecord) -> None:
                r.pause_requested = False
                r.job.worker = ""
                # The pause checkpoint is at outcome.step; the last progress event may be
                # older (progress_interval > 1): show where a resume will continue (issue 8).
                if outcome.step > r.job.progress.step:
                    r.job.progress.step = outcome.step
                    total = r.job.progress.total_steps or int(r.job.spec.max_steps) or 0
                    if total:
                        r.job.progress.fraction_done = outcome.step / total

            _, event = await self.db(self.store.transition, self.job_id, PAUSED,
                                     f"paused by request at step {outcome.step}",
                                     worker=name, expect_worker=name, mutate=paused)
            await self.worker.publish(event)
            await self.queue.ack(self.claim)
        else:
            def requeued(r: JobRecord) -> None:
                r.job.worker = ""

            _, event = await self.db(self.store.transition, self.job_id, QUEUED,
                                             f"worker {name} shutting down at step {outcome.step}; requeued",
                                             worker=name, expect_worker=name, mutate=requeued)
            await self.worker.publish(event)
            await self._requeue()

    async def _requeue(self) -> None:
        """Make the (now QUEUED) job claimable again: release the entry this worker holds,
        or, when that entry is gone, enqueue a new one and record it. If Redis is away
        the job stays QUEUED in the database and the reconciler enqueues it."""
        try:
            if await self.queue.release(self.claim, self.worker.name):
                return
            rec = await self.db(self.store.get, self.job_id)
            cursor = await self.queue.enqueue(rec.job.name, rec.job.spec.priority or job_pb.PRIORITY_NORMAL,
                                              rec.job.attempts + 1)
            await self.db(self.store.set_queue_entry, self.job_id, cursor.entry_id, expect_entry=self.claim.entry_id)
        except Exception:  # noqa: BLE001
            _log.warning("could not requeue; the reconciler will", exc_info=True, extra={"job": self.job_id})

    async def _give_up(self, rec: JobRecord, message: str, *, status: status_pb2.Status | None = None,
                       expect_worker: str | None = None, dead_letter: bool = True) -> None:
        status = status or _status(code_pb2.ABORTED, message)

        def failed(r: JobRecord) -> None:
            r.failures += 1

        _, event = await self.db(
            self.store.transition, self.job_id, FAILED, f"failed after {rec.failures + 1} attempts: {message}",
            worker=self.worker.name, error=status, expect_worker=expect_worker, mutate=failed)
        await self.worker.publish(event)
        if dead_letter:
            await self.queue.dead_letter(self.claim, self.worker.name, message)
        else:
            await self.queue.ack(self.claim)

    # ---------------------------------------------------------------- loops
    async def _pump(self, events: asyncio.Queue[Any], job_name: str, total_steps: int) -> None:
        """Engine events → store (sequence) → bus, in order, in batches.

        Each turn takes every event queued by then (up to ``None``, the end), stores them
        in one transaction and publishes them in one bus call, so a burst costs one
        commit and one round trip, not one per event.
        """
        while True:
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            end = None in batch
            items = batch[:batch.index(None)] if end else batch
            if items:
                await self._record(items, job_name, total_steps)
            if end:
                return

    async def _record(self, items: list[Any], job_name: str, total_steps: int) -> None:
        """Map engine events to TrainingJobEvents, store them as one batch, publish them."""
        from services.training.engine import CheckpointEvent, EvalEvent, ProgressEvent

        out: list[ev_pb.TrainingJobEvent] = []
        checkpoints: list[job_pb.Checkpoint] = []
        progress: job_pb.TrainingProgress | None = None
        for item in items:
            try:
                if isinstance(item, CheckpointEvent):
                    ckpt = mapping.checkpoint_proto(job_name, item, self._metrics, total_steps)
                    checkpoints.append(ckpt)
                    event = ev_pb.TrainingJobEvent(checkpoint_written=ckpt)
                    event.time.CopyFrom(ckpt.create_time)
                else:
                    event = mapping.event_proto(item)
                    if event is None:
                        continue
                    if isinstance(item, ProgressEvent):
                        self._metrics = {"train_loss": item.train_loss, "train_accuracy": item.train_accuracy}
                        if item.eval_loss is not None:
                            self._metrics.update(eval_loss=item.eval_loss, eval_accuracy=item.eval_accuracy or 0.0)
                        progress = event.progress
                    elif isinstance(item, EvalEvent):
                        self._metrics.update(eval_loss=item.validation_loss, eval_accuracy=item.validation_accuracy)
            except Exception:  # noqa: BLE001 - one unmappable event must not lose the others
                _log.exception("could not map an event", extra={"job": self.job_id})
                continue
            out.append(event)
        if not out:
            return

        def mutate(r: JobRecord) -> None:
            if progress is not None:
                r.job.progress.CopyFrom(progress)
            if checkpoints:
                r.job.latest_checkpoint = checkpoints[-1].name

        try:
            stored = await self.db(self.store.append_events, self.job_id, out, checkpoints=checkpoints,
                                              expect_worker=self.worker.name, mutate=mutate)
        except FailedPrecondition:
            self.lost = True
            if self.control is not None:
                self.control.cancel()
            return
        except Exception:  # noqa: BLE001
            _log.exception("could not record %d events", len(out), extra={"job": self.job_id})
            return
        await self.worker.publish_many(stored.events, stored.data)

    async def _heartbeat(self) -> None:
        name = self.worker.name
        ttl_ms = int(self.config.heartbeat_timeout_s * 1000)
        while not self._done:
            if not await self._check_store():
                return
            try:
                if not self.detached and not await self.queue.touch(self.claim, name):
                    if not await self._check_store():
                        return
                    # Nobody else holds it (the database still names this worker): the
                    # entry was deleted, trimmed or forgotten by a restarted Redis.
                    self.detached = True
                    _log.warning("the job's queue entry is gone; the database says this worker holds the "
                                 "job, so it goes on running it", extra={"job": self.job_id})
                await self.bus.client.set(self.worker.keys.job_heartbeat(self.job_id), name, px=ttl_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis hiccup: try again next beat
                if isinstance(as_domain_error(exc), Unavailable):
                    _log.warning("heartbeat failed, Redis unavailable: %r", exc, extra={"job": self.job_id})
                else:
                    _log.warning("heartbeat failed", exc_info=True)
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _check_store(self) -> bool:
        """Apply the job's stored cancel/pause flags; False (and stop) when this worker
        no longer holds the job (taken over, reclaimed, or cancelled as an orphan)."""
        try:
            rec = await self.db(self.store.get, self.job_id)
        except NotFound:
            rec = None
        except Exception:  # noqa: BLE001 - a busy database: try again next beat
            _log.warning("could not read the job", exc_info=True, extra={"job": self.job_id})
            return True
        if rec is None or rec.state != RUNNING or rec.job.worker != self.worker.name:
            _log.warning("the job is no longer held by this worker (%s, worker %r); stopping it",
                         "deleted" if rec is None else job_pb.TrainingJobState.Name(rec.state),
                         rec.job.worker if rec else "", extra={"job": self.job_id})
            self.lost = True
            if self.control is not None:
                self.control.cancel()
            return False
        if self.control is not None:
            if rec.cancel_requested:
                self.control.cancel()
            if rec.pause_requested and not self.user_pause:
                self.user_pause = True
                self.control.pause()
        return True

    async def _listen(self, control: Any) -> None:
        """Apply requests from this attempt's control stream to the running trainer."""
        stream = self.worker.keys.control(self.job_id, self.attempt)
        last = "0-0"
        client = self.bus.blocking_client  # BLOCK 1 s: not on the command pool's short timeout
        while not self._done:
            try:
                reply = await client.xread({stream: last}, count=100, block=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.5)
                continue
            for _name, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self._apply(control, {k.decode(): v.decode() for k, v in fields.items()})

    def _apply(self, control: Any, fields: dict[str, str]) -> None:
        action = fields.get("action", "")
        try:
            if action == "cancel":
                control.cancel()
            elif action == "pause":
                self.user_pause = True
                control.pause()
            elif action == "checkpoint":
                control.checkpoint_now()
            elif action == "adjust":
                if "lr" in fields:
                    control.set_lr(float(fields["lr"]))
                if "alpha" in fields or "lamb" in fields:
                    control.set_grokfast(float(fields["alpha"]) if "alpha" in fields else None,
                                         float(fields["lamb"]) if "lamb" in fields else None)
        except ValueError:
            _log.warning("ignored bad control request %r", fields, extra={"job": self.job_id})
