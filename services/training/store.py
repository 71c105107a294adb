"""Durable job store: SQLite (WAL) shared by the service process and its workers.

Tables::

    meta(key, value)                  the store's epoch (minted once, at creation)
    schema_version(version, applied)  the migrations applied (services/shared/migrations.py)
    jobs(seq, id, request_id UNIQUE,  the TrainingJob resource (serialized proto) plus the
         state, phase, labels,        columns the service filters on and the internal
         creator, job,
         last_sequence, failures,     bookkeeping workers need (failed attempts, pending
         cancel/pause_requested,      cancel/pause, adjustments waiting for a resume, the
         pending_adjust, queue_entry) queue entry of the current run)
    events(job_id, sequence, data)    append-only history: serialized TrainingJobEvent
    checkpoints(job_id, step, data)   Checkpoint resources (sha256, metrics, trigger)
    outbox(id, event_id UNIQUE,       lifecycle events for ``events.training`` (serialized
           subject, data,             agentforge.events.v1.Event envelopes: every state
           create_time)               change, TrainingJobCompleted), written in the
                                      transaction that makes the change; the relay
                                      (services/shared/outbox.py) publishes and deletes them
    metric_points(job_id, sequence,   the progress and eval events again, as chart points:
         kind, step, value, data)     kind 0 = TrainingProgress, 1 = EvalMetrics; value is
                                      the series LTTB downsamples on (train_loss, loss);
                                      written in the transaction that appends the event
                                      (GetTrainingJobMetrics reads it, never the events)

The state machine lives here and only here (:data:`TRANSITIONS`); every transition is
one transaction that updates the job and appends its ``StateChanged`` event with the
next per-job sequence, so the event history and the job never disagree. Illegal
transitions raise :class:`~services.shared.errors.FailedPrecondition`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from agentforge.events.v1 import event_pb2
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from services.shared.errors import AlreadyExists, FailedPrecondition, NotFound
from services.shared.events import envelope
from services.shared.migrations import Step, migrate
from services.training.cursor import WatchCursor

__all__ = ["Appended", "JobRecord", "Store", "TERMINAL", "TRANSITIONS", "job_id_of", "now_ts"]

#: ``source`` of the service's Event envelopes.
SOURCE = "training"

S = job_pb.TrainingJobState
QUEUED, RUNNING, PAUSED = S.TRAINING_JOB_STATE_QUEUED, S.TRAINING_JOB_STATE_RUNNING, S.TRAINING_JOB_STATE_PAUSED
SUCCEEDED, FAILED, CANCELLED = (S.TRAINING_JOB_STATE_SUCCEEDED, S.TRAINING_JOB_STATE_FAILED,
                                S.TRAINING_JOB_STATE_CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

#: Legal transitions. RUNNING → RUNNING is a takeover (another worker resumes the job after
#: its worker's heartbeat lapsed); RUNNING → QUEUED a requeue (failed attempt, shutdown).
TRANSITIONS: dict[int, frozenset[int]] = {
    S.TRAINING_JOB_STATE_UNSPECIFIED: frozenset({QUEUED}),
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({RUNNING, QUEUED, PAUSED, SUCCEEDED, FAILED, CANCELLED}),
    PAUSED: frozenset({QUEUED, CANCELLED}),
}

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    state INTEGER NOT NULL,
    phase TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    job BLOB NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pause_requested INTEGER NOT NULL DEFAULT 0,
    pending_adjust TEXT NOT NULL DEFAULT '{}',
    queue_entry TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_points (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
"""


def _backfill_metric_points(db: sqlite3.Connection) -> None:
    """A store made before metric_points existed gets its points once (from the events)."""
    if db.execute("SELECT 1 FROM meta WHERE key='metric_points'").fetchone():
        return  # done by the code before versioned migrations
    rows = db.execute("SELECT job_id, sequence, data FROM events ORDER BY job_id, sequence").fetchall()
    for job_id, sequence, data in rows:
        event = ev_pb.TrainingJobEvent()
        event.ParseFromString(data)
        Store._index_metrics(db, job_id, [(sequence, event)])
    db.execute("INSERT INTO meta(key, value) VALUES('metric_points', 'v1')")


def _add_creator(db: sqlite3.Connection) -> None:
    """``jobs.creator``: who created the job (the ``sub`` of the create call's token).
    Jobs from before are left without one (operators and above control those)."""
    db.execute("ALTER TABLE jobs ADD COLUMN creator TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX IF NOT EXISTS jobs_creator ON jobs(creator, seq)")


#: The transactional outbox of ``events.training`` (see :meth:`Store.outbox_pending`):
#: ``id`` orders the entries, ``event_id`` is the envelope's id (consumers dedupe by it).
_OUTBOX = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    data BLOB NOT NULL,
    create_time INTEGER NOT NULL
)
"""

#: The store's schema, step by step (services/shared/migrations.py). Append only.
_MIGRATIONS: dict[int, Step] = {
    1: _SCHEMA_V1,  # idempotent: stores made before versioned migrations adopt it as is
    2: _backfill_metric_points,
    3: _add_creator,
    4: _OUTBOX,
}


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def job_id_of(name: str) -> str:
    """``trainingJobs/abc`` → ``abc``."""
    return name.rpartition("/")[2]


@dataclass
class JobRecord:
    """A job with the bookkeeping that is not part of the resource."""

    job: job_pb.TrainingJob
    seq: int
    last_sequence: int = 0
    failures: int = 0
    cancel_requested: bool = False
    pause_requested: bool = False
    pending_adjust: dict[str, float] = field(default_factory=dict)
    queue_entry: str = ""

    @property
    def id(self) -> str:
        return job_id_of(self.job.name)

    @property
    def state(self) -> int:
        return self.job.state


Mutator = Callable[[JobRecord], None]


class Appended(NamedTuple):
    """What :meth:`Store.append_events` stored: the job after it, the events (now with
    sequence, cursor, epoch and time) and each event's serialized bytes."""

    record: JobRecord
    events: list[ev_pb.TrainingJobEvent]
    data: list[bytes]


class Store:
    """The job database. Thread-safe within a process; many processes may share the file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        #: Called (on the writing thread, after the commit) when a transaction of this
        #: process added outbox entries: the relay's wake-up. Other processes sharing the
        #: file (the workers) are seen by the relay's poll.
        self.on_outbox: Callable[[], None] | None = None
        self._outboxed = False
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            migrate(self._db, _MIGRATIONS, store=f"training store {self.path}")
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta(key, value) VALUES('epoch', ?)",
                                 (f"{int(time.time()):x}{secrets.token_hex(4)}",))
        self.epoch: str = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers across processes serialize)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._outboxed = False
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if self._outboxed:
                self._outboxed = False
                if self.on_outbox is not None:
                    self.on_outbox()

    # ------------------------------------------------------------------ rows
    @staticmethod
    def _record(row: sqlite3.Row | tuple) -> JobRecord:
        seq, blob, last_sequence, failures, cancel, pause, adjust, entry = row
        job = job_pb.TrainingJob()
        job.ParseFromString(blob)
        return JobRecord(job, seq, last_sequence, failures, bool(cancel), bool(pause),
                         json.loads(adjust), entry)

    _COLS = "seq, job, last_sequence, failures, cancel_requested, pause_requested, pending_adjust, queue_entry"

    def _load(self, db: sqlite3.Connection, job_id: str) -> JobRecord:
        row = db.execute(f"SELECT {self._COLS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"trainingJobs/{job_id} not found", reason="NOT_FOUND",
                           metadata={"resource": f"trainingJobs/{job_id}"})
        return self._record(row)

    def _save(self, db: sqlite3.Connection, rec: JobRecord) -> None:
        rec.job.update_time.CopyFrom(now_ts())
        db.execute(
            "UPDATE jobs SET state=?, job=?, last_sequence=?, failures=?, cancel_requested=?,"
            " pause_requested=?, pending_adjust=?, queue_entry=? WHERE id=?",
            (rec.job.state, rec.job.SerializeToString(), rec.last_sequence, rec.failures,
             int(rec.cancel_requested), int(rec.pause_requested), json.dumps(rec.pending_adjust),
             rec.queue_entry, rec.id),
        )

    def _stamp(self, rec: JobRecord, event: ev_pb.TrainingJobEvent) -> bytes:
        """Give ``event`` the job's next sequence (and cursor, epoch, time); its bytes."""
        rec.last_sequence += 1
        event.training_job = rec.job.name
        event.sequence = rec.last_sequence
        event.epoch = self.epoch
        event.cursor = WatchCursor(self.epoch, rec.id, rec.last_sequence).encode()
        if not event.HasField("time"):
            event.time.CopyFrom(now_ts())
        return event.SerializeToString()

    def _append(self, db: sqlite3.Connection, rec: JobRecord, event: ev_pb.TrainingJobEvent) -> ev_pb.TrainingJobEvent:
        data = self._stamp(rec, event)
        db.execute("INSERT INTO events(job_id, sequence, data) VALUES(?,?,?)", (rec.id, rec.last_sequence, data))
        self._index_metrics(db, rec.id, [(rec.last_sequence, event)])
        return event

    def _outbox(self, db: sqlite3.Connection, payload: Message, subject: str) -> None:
        """Add ``payload``, wrapped in an Event envelope, to the outbox (in ``db``'s transaction)."""
        event = envelope(payload, source=SOURCE, subject=subject)
        db.execute("INSERT INTO outbox(event_id, subject, data, create_time) VALUES(?,?,?,?)",
                   (event.id, subject, event.SerializeToString(), time.time_ns() // 1000))
        self._outboxed = True

    def outbox_pending(self, limit: int = 100) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` outbox entries, in order: ``(id, serialized Event)``."""
        with self._lock:
            rows = self._db.execute("SELECT id, data FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [(int(i), bytes(d)) for i, d in rows]

    def outbox_ack(self, ids: Sequence[int]) -> None:
        """Forget published entries (idempotent)."""
        if ids:
            with self._tx() as db:
                db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])

    def outbox_size(self) -> int:
        """Entries not yet published."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @staticmethod
    def _index_metrics(db: sqlite3.Connection, job_id: str,
                       events: Sequence[tuple[int, ev_pb.TrainingJobEvent]]) -> None:
        """Copy the progress and eval events among ``events`` into metric_points."""
        rows = []
        for sequence, event in events:
            kind = event.WhichOneof("kind")
            if kind == "progress":
                p = event.progress
                rows.append((job_id, sequence, 0, p.step, p.train_loss, p.SerializeToString()))
            elif kind == "eval_completed":
                e = event.eval_completed
                rows.append((job_id, sequence, 1, e.step, e.loss, e.SerializeToString()))
        if rows:
            db.executemany("INSERT OR REPLACE INTO metric_points(job_id, sequence, kind, step, value, data)"
                           " VALUES(?,?,?,?,?,?)", rows)

    # ------------------------------------------------------------------ jobs
    def create(self, job: job_pb.TrainingJob, job_id: str, request_id: str) -> tuple[JobRecord, list[ev_pb.TrainingJobEvent], bool]:
        """Insert a QUEUED job; a known ``request_id`` returns the existing job (created=False)."""
        with self._tx() as db:
            if request_id:
                row = db.execute(f"SELECT {self._COLS} FROM jobs WHERE request_id=?", (request_id,)).fetchone()
                if row is not None:
                    return self._record(row), [], False
            if db.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone():
                raise AlreadyExists(f"trainingJobs/{job_id} already exists",
                                    metadata={"resource": f"trainingJobs/{job_id}"})
            job.name = f"trainingJobs/{job_id}"
            job.request_id = request_id
            job.state = S.TRAINING_JOB_STATE_UNSPECIFIED
            job.create_time.CopyFrom(now_ts())
            cur = db.execute(
                "INSERT INTO jobs(id, request_id, state, phase, labels, creator, job) VALUES(?,?,?,?,?,?,?)",
                (job_id, request_id or None, job.state, job.phase, json.dumps(dict(job.labels)), job.creator,
                 job.SerializeToString()),
            )
            rec = JobRecord(job, int(cur.lastrowid or 0))
            event = self._transition(db, rec, QUEUED, "created")
            self._save(db, rec)
            return rec, [event], True

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._load(self._db, job_id)

    def list(self, *, states: Sequence[int] = (), phase: str = "", labels: dict[str, str] | None = None,
             before_seq: int | None = None, limit: int = 50) -> list[JobRecord]:
        """Jobs newest first (``seq`` descending), filtered; ``before_seq`` pages."""
        where, args = [], []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += list(states)
        if phase:
            where.append("phase=?")
            args.append(phase)
        for key, value in (labels or {}).items():
            where.append("json_extract(labels, ?) = ?")
            args += [f'$."{key}"', value]
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = f"SELECT {self._COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [self._record(r) for r in self._db.execute(sql, args).fetchall()]

    def update(self, job_id: str, mutate: Mutator) -> JobRecord:
        """Apply ``mutate`` to the job in one transaction (no event)."""
        with self._tx() as db:
            rec = self._load(db, job_id)
            mutate(rec)
            self._save(db, rec)
            return rec

    def delete(self, job_id: str) -> JobRecord:
        """Remove a terminal job with its events and checkpoint records."""
        with self._tx() as db:
            rec = self._load(db, job_id)
            if rec.state not in TERMINAL:
                raise FailedPrecondition(
                    f"{rec.job.name} is {S.Name(rec.state)}; only SUCCEEDED, FAILED or CANCELLED jobs can be deleted")
            for table in ("events", "checkpoints", "metric_points"):
                db.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            return rec

    def queued_without_entry(self) -> list[JobRecord]:
        """QUEUED jobs that never reached the queue (the service died in between)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {self._COLS} FROM jobs WHERE state=? AND queue_entry=''",
                                    (QUEUED,)).fetchall()
        return [self._record(r) for r in rows]

    def in_states(self, states: Sequence[int]) -> list[JobRecord]:
        """Every job in one of ``states``, oldest first (the reconciler's scan)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM jobs WHERE state IN ({','.join('?' * len(states))}) ORDER BY seq",
                list(states)).fetchall()
        return [self._record(r) for r in rows]

    def set_queue_entry(self, job_id: str, entry: str, *, expect_entry: str, states: Sequence[int] = (QUEUED,)) -> bool:
        """Record ``entry`` as the job's one current queue entry, only if the job is still
        in ``states`` with ``expect_entry`` recorded (compare-and-set). False otherwise:
        someone else recorded another entry (or the job moved on), so ``entry`` is stale
        and workers will drop it."""
        with self._tx() as db:
            try:
                rec = self._load(db, job_id)
            except NotFound:
                return False
            if rec.state not in states or rec.queue_entry != expect_entry:
                return False
            rec.queue_entry = entry
            self._save(db, rec)
            return True

    # ------------------------------------------------------------------ state machine
    def _transition(self, db: sqlite3.Connection, rec: JobRecord, to: int, reason: str, *,
                    worker: str | None = None, error: status_pb2.Status | None = None) -> ev_pb.TrainingJobEvent:
        frm = rec.job.state
        if to not in TRANSITIONS.get(frm, frozenset()):
            raise FailedPrecondition(
                f"{rec.job.name or 'job'} is {S.Name(frm)}; cannot move to {S.Name(to)}",
                metadata={"state": S.Name(frm)})
        rec.job.state = to
        now = now_ts()
        if to in TERMINAL:
            rec.job.end_time.CopyFrom(now)
            rec.job.worker = ""
        if error is not None:
            rec.job.error.CopyFrom(error)
        change = ev_pb.StateChanged(from_state=frm, to_state=to, reason=reason, worker=worker or rec.job.worker)
        if error is not None:
            change.error.CopyFrom(error)
        event = self._append(db, rec, ev_pb.TrainingJobEvent(state_changed=change, time=now))
        self._outbox(db, event, rec.job.name)  # events.training: every state change
        return event

    def transition(self, job_id: str, to: int, reason: str, *, worker: str | None = None,
                   error: status_pb2.Status | None = None, expect_worker: str | None = None,
                   mutate: Mutator | None = None,
                   completed_step: int | None = None) -> tuple[JobRecord, ev_pb.TrainingJobEvent]:
        """Move the job to ``to`` (FailedPrecondition if illegal) and record the event.

        ``expect_worker`` fences a worker's write: if another worker owns the job now,
        FailedPrecondition (reason ``NOT_OWNER``). ``mutate`` runs before the state changes.
        ``completed_step`` (with ``to`` = SUCCEEDED): also put the registry's hand-off,
        ``TrainingJobCompleted`` with the job and its checkpoint at that step, in the
        outbox, in the same transaction.
        """
        with self._tx() as db:
            rec = self._load(db, job_id)
            if expect_worker is not None and rec.job.worker != expect_worker:
                raise FailedPrecondition(f"{rec.job.name} is owned by {rec.job.worker or 'nobody'}",
                                         reason="NOT_OWNER")
            if mutate is not None:
                mutate(rec)
            event = self._transition(db, rec, to, reason, worker=worker, error=error)
            self._save(db, rec)
            if completed_step is not None and to == SUCCEEDED:
                row = db.execute("SELECT data FROM checkpoints WHERE job_id=? AND step=?",
                                 (job_id, completed_step)).fetchone()
                checkpoint = job_pb.Checkpoint()
                if row is not None:
                    checkpoint.ParseFromString(row[0])
                self._outbox(db, event_pb2.TrainingJobCompleted(training_job=rec.job, checkpoint=checkpoint),
                             rec.job.name)
            return rec, event

    # ------------------------------------------------------------------ requests
    def request_cancel(self, job_id: str) -> tuple[JobRecord, ev_pb.TrainingJobEvent | None]:
        """QUEUED/PAUSED → CANCELLED now (returns the event); RUNNING → flag it for the worker."""
        with self._tx() as db:
            rec = self._load(db, job_id)
            if rec.state in (QUEUED, PAUSED):
                event = self._transition(db, rec, CANCELLED, "cancelled by request")
                self._save(db, rec)
                return rec, event
            if rec.state != RUNNING:
                raise FailedPrecondition(f"{rec.job.name} is {S.Name(rec.state)}; it cannot be cancelled",
                                         metadata={"state": S.Name(rec.state)})
            rec.cancel_requested = True
            self._save(db, rec)
            return rec, None

    def request_pause(self, job_id: str) -> JobRecord:
        """Flag a RUNNING job to pause (its worker checkpoints, then moves it to PAUSED)."""
        return self._flag(job_id, (RUNNING,), "paused", lambda r: setattr(r, "pause_requested", True))

    def require_state(self, job_id: str, states: Sequence[int], verb: str) -> JobRecord:
        return self._flag(job_id, states, verb, lambda r: None)

    def request_adjust(self, job_id: str, values: dict[str, float]) -> JobRecord:
        """RUNNING: checked only (the worker gets the change live); PAUSED: kept for the resume."""
        def merge(rec: JobRecord) -> None:
            if rec.state == PAUSED:
                rec.pending_adjust = {**rec.pending_adjust, **values}
        return self._flag(job_id, (RUNNING, PAUSED), "adjusted", merge)

    def _flag(self, job_id: str, states: Sequence[int], verb: str, mutate: Mutator) -> JobRecord:
        with self._tx() as db:
            rec = self._load(db, job_id)
            if rec.state not in states:
                allowed = " or ".join(S.Name(s) for s in states)
                raise FailedPrecondition(
                    f"{rec.job.name} is {S.Name(rec.state)}; only {allowed} jobs can be {verb}",
                    metadata={"state": S.Name(rec.state)})
            mutate(rec)
            self._save(db, rec)
            return rec

    def resume(self, job_id: str) -> tuple[JobRecord, ev_pb.TrainingJobEvent]:
        """PAUSED → QUEUED."""
        with self._tx() as db:
            rec = self._load(db, job_id)
            if rec.state != PAUSED:
                raise FailedPrecondition(f"{rec.job.name} is {S.Name(rec.state)}; only PAUSED jobs can be resumed",
                                         metadata={"state": S.Name(rec.state)})
            rec.queue_entry = ""
            event = self._transition(db, rec, QUEUED, "resumed by request")
            self._save(db, rec)
            return rec, event

    def append_event(self, job_id: str, event: ev_pb.TrainingJobEvent, *, expect_worker: str | None = None,
                     mutate: Mutator | None = None) -> tuple[JobRecord, ev_pb.TrainingJobEvent]:
        """Append a non-state event with the next sequence (and optionally update the job)."""
        with self._tx() as db:
            rec = self._load(db, job_id)
            if expect_worker is not None and rec.job.worker != expect_worker:
                raise FailedPrecondition(f"{rec.job.name} is owned by {rec.job.worker or 'nobody'}",
                                         reason="NOT_OWNER")
            if mutate is not None:
                mutate(rec)
            stored = self._append(db, rec, event)
            self._save(db, rec)
            return rec, stored

    def append_events(self, job_id: str, events: Sequence[ev_pb.TrainingJobEvent], *,
                      checkpoints: Sequence[job_pb.Checkpoint] = (), expect_worker: str | None = None,
                      mutate: Mutator | None = None) -> Appended:
        """Append non-state events with consecutive sequences, in order, in ONE transaction.

        Also records ``checkpoints`` and applies ``mutate`` to the job, in the same
        transaction: either all of it is stored or none (FailedPrecondition ``NOT_OWNER``
        when ``expect_worker`` no longer owns the job). The result carries each stored
        event's serialized bytes, so publishers need not serialize it again.
        """
        with self._tx() as db:
            rec = self._load(db, job_id)
            if expect_worker is not None and rec.job.worker != expect_worker:
                raise FailedPrecondition(f"{rec.job.name} is owned by {rec.job.worker or 'nobody'}",
                                         reason="NOT_OWNER")
            if mutate is not None:
                mutate(rec)
            if checkpoints:
                db.executemany("INSERT OR REPLACE INTO checkpoints(job_id, step, data) VALUES(?,?,?)",
                               [(job_id, c.step, c.SerializeToString()) for c in checkpoints])
            blobs = [self._stamp(rec, event) for event in events]
            first = rec.last_sequence - len(blobs) + 1
            db.executemany("INSERT INTO events(job_id, sequence, data) VALUES(?,?,?)",
                           [(rec.id, first + i, blob) for i, blob in enumerate(blobs)])
            self._index_metrics(db, rec.id, [(first + i, event) for i, event in enumerate(events)])
            self._save(db, rec)
            return Appended(rec, list(events), blobs)

    def events_after(self, job_id: str, sequence: int, limit: int = 500) -> list[ev_pb.TrainingJobEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM events WHERE job_id=? AND sequence>? ORDER BY sequence LIMIT ?",
                (job_id, sequence, limit)).fetchall()
        out = []
        for (data,) in rows:
            event = ev_pb.TrainingJobEvent()
            event.ParseFromString(data)
            out.append(event)
        return out

    def metric_points(self, job_id: str) -> tuple[int, list[tuple[int, int, float, bytes]], list[tuple[int, int, float, bytes]]]:
        """``(last sequence, progress rows, eval rows)`` of a job, as of one moment.

        Rows are ``(sequence, step, value, data)``, ascending by step, each series as a
        watcher applying the events in order ends up with it: a point whose step is not
        after the previous one (the job went back to a checkpoint) drops the points from
        that step on. Every row's event has a sequence <= the last sequence returned, and
        every progress/eval event up to it is represented. NotFound for an unknown job.
        """
        with self._lock:
            self._db.execute("BEGIN")  # one read snapshot (WAL): the job row and its points agree
            try:
                rec = self._load(self._db, job_id)
                rows = self._db.execute(
                    "SELECT kind, sequence, step, value, data FROM metric_points"
                    " WHERE job_id=? AND sequence<=? ORDER BY sequence",
                    (job_id, rec.last_sequence)).fetchall()
            finally:
                self._db.execute("COMMIT")
        series: tuple[list[tuple[int, int, float, bytes]], ...] = ([], [])
        for kind, sequence, step, value, data in rows:
            out = series[kind]
            while out and out[-1][1] >= step:
                out.pop()
            out.append((sequence, step, value, data))
        return rec.last_sequence, series[0], series[1]

    # ------------------------------------------------------------------ checkpoints
    def put_checkpoint(self, job_id: str, checkpoint: job_pb.Checkpoint) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints(job_id, step, data) VALUES(?,?,?)",
                       (job_id, checkpoint.step, checkpoint.SerializeToString()))

    def checkpoints(self, job_id: str) -> dict[int, job_pb.Checkpoint]:
        with self._lock:
            rows = self._db.execute("SELECT step, data FROM checkpoints WHERE job_id=?", (job_id,)).fetchall()
        out = {}
        for step, data in rows:
            ckpt = job_pb.Checkpoint()
            ckpt.ParseFromString(data)
            out[int(step)] = ckpt
        return out
