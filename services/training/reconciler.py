"""The reconciler: puts the queue (Redis, may forget) back in step with the job database.

The database is the source of truth for every job; the queue is only how work reaches
workers. A Redis restart without persistence forgets every entry, an operator may
``XDEL`` or trim one, and a service may die between storing a job and enqueueing it.
At start and every ``reconcile_interval_s`` the reconciler scans the live jobs:

=========  ===================================  ===========================================
state      out of step when                     action
=========  ===================================  ===========================================
QUEUED     its recorded entry is gone           enqueue a new entry (compare-and-set on the
           (not pending, not waiting)           recorded entry; a stale one is dropped by
                                                the worker that reads it)
RUNNING    its entry is not pending *and* no    cancel requested → CANCELLED; pause
           worker heartbeats the job            requested → PAUSED; out of attempts →
           (``training.heartbeat.job.<id>``     FAILED (ABORTED); otherwise → QUEUED with
           does not name the job's worker)      one more failed attempt, and enqueue
=========  ===================================  ===========================================

A RUNNING job whose entry is still pending is left to the queue: its worker touches it,
or XAUTOCLAIM hands it to another worker once it is idle past the heartbeat timeout.

To never race a create in flight or a worker that is re-establishing its heartbeat
after a Redis restart, a job is acted on only when found out of step on two passes at
least ``reconcile_interval_s`` apart (QUEUED) or for at least ``heartbeat_timeout_s``
(RUNNING). Every state change is a fenced store transition (``expect_worker``), so a
worker that comes back finds the job no longer its own and stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.rpc import code_pb2, status_pb2

from services.shared.errors import FailedPrecondition, NotFound, Unavailable, as_domain_error
from services.training.jobs import JobManager
from services.training.store import CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, JobRecord

__all__ = ["Reconciler", "ReconcileReport"]

_log = logging.getLogger("services.training.reconciler")


@dataclass
class ReconcileReport:
    """What one pass did (job ids)."""

    requeued: list[str] = field(default_factory=list)
    reclaimed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.reclaimed)


class Reconciler:
    """Periodic database ↔ queue reconciliation for one training service."""

    def __init__(self, jobs: JobManager, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = jobs
        self.config = jobs.config
        self._clock = clock
        #: job id → (what was out of step, first seen at). Forgotten once back in step.
        self._suspects: dict[str, tuple[tuple[object, ...], float]] = {}

    async def run(self) -> None:
        """Pass after pass until cancelled; Redis being away skips a pass, quietly."""
        while True:
            try:
                report = await self.pass_once()
                if report:
                    _log.info("reconciled: re-enqueued %s, reclaimed %s", report.requeued, report.reclaimed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed pass must not end reconciling
                if isinstance(as_domain_error(exc), Unavailable):
                    _log.warning("reconcile pass skipped, Redis unavailable: %r", exc)
                else:
                    _log.exception("reconcile pass failed")
            await asyncio.sleep(self.config.reconcile_interval_s)

    def _due(self, job_id: str, key: tuple[object, ...], grace_s: float, now: float) -> bool:
        """Record that ``job_id`` is out of step as ``key``; True once it has been so,
        with the same key, for at least ``grace_s``."""
        seen = self._suspects.get(job_id)
        if seen is None or seen[0] != key:
            self._suspects[job_id] = (key, now)
            return False
        return now - seen[1] >= grace_s

    async def pass_once(self) -> ReconcileReport:
        """One scan of QUEUED and RUNNING jobs (see the module docstring)."""
        report = ReconcileReport()
        now = self._clock()
        # Slightly under the interval, so the pass after the first sighting acts.
        queued_grace = self.config.reconcile_interval_s * 0.9
        live: set[str] = set()
        for rec in await self.jobs.db(self.jobs.store.in_states, (QUEUED, RUNNING)):
            live.add(rec.id)
            where = await self.jobs.queue.entry_state(rec.job.spec.priority, rec.queue_entry)
            if rec.state == QUEUED:
                if where != "gone":
                    self._suspects.pop(rec.id, None)
                elif self._due(rec.id, ("queued", rec.queue_entry), queued_grace, now):
                    if await self.jobs.enqueue(rec):
                        report.requeued.append(rec.id)
                    self._suspects.pop(rec.id, None)
                continue
            # RUNNING
            if where == "pending" or await self.jobs.worker_alive(rec) is not False:
                self._suspects.pop(rec.id, None)
                continue
            if self._due(rec.id, ("running", rec.job.worker, rec.queue_entry), self.config.heartbeat_timeout_s, now):
                self._suspects.pop(rec.id, None)
                if await self._reclaim(rec):
                    report.reclaimed.append(rec.id)
        for job_id in set(self._suspects) - live:
            del self._suspects[job_id]
        return report

    async def _reclaim(self, rec: JobRecord) -> bool:
        """End or requeue a RUNNING job that no live worker holds; False if it moved on."""
        lost = rec.job.worker or "?"
        store, db = self.jobs.store, self.jobs.db
        failures = rec.failures + 1

        def requeued(r: JobRecord) -> None:
            r.failures += 1
            r.job.worker = ""

        def paused(r: JobRecord) -> None:
            r.pause_requested = False
            r.job.worker = ""

        try:
            if rec.cancel_requested:
                new, event = await db(store.transition, rec.id, CANCELLED,
                                      f"cancelled by request; worker {lost} was lost", expect_worker=rec.job.worker)
            elif rec.pause_requested:
                new, event = await db(store.transition, rec.id, PAUSED, f"paused by request; worker {lost} was lost",
                                      expect_worker=rec.job.worker, mutate=paused)
            elif failures >= self.config.max_attempts:
                message = f"worker {lost} was lost; {failures} failed attempts"
                status = status_pb2.Status(code=code_pb2.ABORTED, message=message)
                new, event = await db(store.transition, rec.id, FAILED, f"failed after {failures} attempts: {message}",
                                      error=status, expect_worker=rec.job.worker,
                                      mutate=lambda r: setattr(r, "failures", r.failures + 1))
            else:
                new, event = await db(store.transition, rec.id, QUEUED, f"worker {lost} was lost; requeued",
                                      expect_worker=rec.job.worker, mutate=requeued)
        except (FailedPrecondition, NotFound):
            return False
        _log.warning("reclaimed %s from lost worker %s → %s", rec.job.name, lost, new.job.state)
        await self.jobs.publish_events([event])
        if new.state == QUEUED:
            await self.jobs.enqueue(new)
        return True
