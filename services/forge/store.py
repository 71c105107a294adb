"""Durable phase runs: SQLite (WAL) holding each run's latest snapshot and its event history.

The history is what ``WatchPhaseRun`` replays after a cursor. The database's ``epoch`` is
minted when the file is created; a new file (history lost) means a new epoch, which
watchers see on every event. The schema is versioned (``_MIGRATIONS``,
services/shared/migrations.py). Synchronous by design (local SQLite, short transactions);
the service calls it on the store's own thread, :attr:`RunStore.db` (a
:class:`~services.shared.dbthread.DatabaseThread`: off the event loop, in call order).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from pathlib import Path

from google.protobuf import timestamp_pb2

from agentforge.forge.v1 import phase_run_event_pb2 as ev
from services.shared.dbthread import DatabaseThread
from agentforge.forge.v1 import phase_run_pb2 as pr
from services.shared.migrations import Step, migrate

__all__ = ["RunStore"]

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    phase TEXT NOT NULL,
    state INTEGER NOT NULL,
    request_id TEXT UNIQUE,
    create_us INTEGER NOT NULL,
    saga_data TEXT NOT NULL DEFAULT '{}',
    snapshot BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (create_us DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""

#: The store's schema, step by step (services/shared/migrations.py). Append only.
_MIGRATIONS: dict[int, Step] = {
    1: _SCHEMA_V1,  # idempotent: stores made before versioned migrations adopt it as is
    # who started the run (the ``sub`` of the start call's token); '' for older runs
    2: "ALTER TABLE runs ADD COLUMN creator TEXT NOT NULL DEFAULT ''",
}


class RunStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        #: The store's thread: ``await store.db(store.get, run_id)``.
        self.db = DatabaseThread("forge-db")
        with self._lock:
            migrate(self._db, _MIGRATIONS, store=f"forge store {path}")
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),))
                row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        self.epoch: str = row[0]

    def close(self) -> None:
        """Wait for the calls already submitted to :attr:`db`, then close the database."""
        self.db.close()
        self._db.close()

    # -- runs ---------------------------------------------------------------------
    # Every read takes the lock too: the connection is shared by threads, and a read on it
    # in the middle of save()'s transaction would see the new snapshot before its event.
    def by_request_id(self, request_id: str) -> pr.PhaseRun | None:
        with self._lock:
            row = self._db.execute("SELECT snapshot FROM runs WHERE request_id=?", (request_id,)).fetchone()
        return pr.PhaseRun.FromString(row[0]) if row else None

    def get(self, run_id: str) -> pr.PhaseRun | None:
        with self._lock:
            row = self._db.execute("SELECT snapshot FROM runs WHERE id=?", (run_id,)).fetchone()
        return pr.PhaseRun.FromString(row[0]) if row else None

    def insert(self, run: pr.PhaseRun) -> bool:
        """Store a new run; False if its id or request id is taken."""
        run_id = run.name.split("/", 1)[1]
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO runs (id, phase, state, request_id, create_us, creator, snapshot)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, run.phase, run.state, run.request_id or None,
                     _us(run.create_time), run.creator, run.SerializeToString()),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def save(self, run: pr.PhaseRun, event: ev.PhaseRunEvent | None = None) -> ev.PhaseRunEvent | None:
        """Persist the snapshot and, atomically, append ``event`` (sequence, cursor and
        epoch filled in here) carrying that snapshot."""
        run_id = run.name.split("/", 1)[1]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE runs SET state=?, snapshot=? WHERE id=?",
                                 (run.state, run.SerializeToString(), run_id))
                if event is not None:
                    (last,) = self._db.execute(
                        "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id=?", (run_id,)).fetchone()
                    event.sequence = last + 1
                    event.epoch = self.epoch
                    event.cursor = f"{self.epoch}.{event.sequence}"
                    event.phase_run.CopyFrom(run)
                    self._db.execute("INSERT INTO events VALUES (?, ?, ?)",
                                     (run_id, event.sequence, event.SerializeToString()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return event

    def saga_data(self, run_id: str) -> dict:
        """Data a saga keeps for compensation (e.g. an alias's previous target)."""
        with self._lock:
            row = self._db.execute("SELECT saga_data FROM runs WHERE id=?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    def set_saga_data(self, run_id: str, data: dict) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET saga_data=? WHERE id=?", (json.dumps(data), run_id))

    def list(self, *, phase: str, states: list[int], labels: dict[str, str],
             after: tuple[int, str] | None, limit: int) -> list[pr.PhaseRun]:
        sql = "SELECT snapshot, create_us, id FROM runs WHERE 1=1"
        args: list[object] = []
        if phase:
            sql += " AND phase=?"
            args.append(phase)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        if after is not None:
            sql += " AND (create_us < ? OR (create_us = ? AND id < ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY create_us DESC, id DESC"
        out = []
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        for blob, _, _ in rows:
            run = pr.PhaseRun.FromString(blob)
            if all(run.labels.get(k) == v for k, v in labels.items()):
                out.append(run)
                if len(out) == limit:
                    break
        return out

    def unfinished(self) -> list[pr.PhaseRun]:
        done = (pr.PHASE_RUN_STATE_SUCCEEDED, pr.PHASE_RUN_STATE_FAILED, pr.PHASE_RUN_STATE_CANCELLED)
        with self._lock:
            rows = self._db.execute(
                f"SELECT snapshot FROM runs WHERE state NOT IN ({','.join('?' * len(done))})", done).fetchall()
        return [pr.PhaseRun.FromString(r[0]) for r in rows]

    def latest(self, phase: str) -> pr.PhaseRun | None:
        """The most recently created run of ``phase`` (``phases/{id}``), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT snapshot FROM runs WHERE phase=? ORDER BY create_us DESC, id DESC LIMIT 1", (phase,)).fetchone()
        return pr.PhaseRun.FromString(row[0]) if row else None

    def latest_run(self, phase: str) -> str:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM runs WHERE phase=? ORDER BY create_us DESC, id DESC LIMIT 1", (phase,)).fetchone()
        return f"phaseRuns/{row[0]}" if row else ""

    # -- events -------------------------------------------------------------------
    def events_after(self, run_id: str, seq: int, limit: int = 500) -> list[ev.PhaseRunEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM events WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?", (run_id, seq, limit)).fetchall()
        return [ev.PhaseRunEvent.FromString(r[0]) for r in rows]


def _us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000

