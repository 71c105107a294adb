"""Versioned schema migrations (services/shared/migrations.py) and the stores that use
them: a store made before the runner (or before a step) is brought up to date, once,
keeping its data; a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentforge.forge.v1 import phase_run_pb2 as pr
from agentforge.training.v1 import training_job_pb2 as job_pb
from services.forge import store as forge_store
from services.forge.store import RunStore
from services.shared.migrations import migrate, schema_version
from services.training import store as training_store
from services.training.store import Store


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_steps_apply_once_in_order_and_record_their_version(tmp_path: Path) -> None:
    db = _db(tmp_path / "x.db")
    calls: list[int] = []

    def second(conn: sqlite3.Connection) -> None:
        calls.append(2)
        conn.execute("INSERT INTO t VALUES (42)")

    steps = {1: "CREATE TABLE t (v INTEGER); CREATE INDEX t_v ON t(v)", 2: second}
    assert migrate(db, steps, store="x") == 2
    assert migrate(db, steps, store="x") == 2  # nothing again
    assert calls == [2]
    assert schema_version(db) == 2
    assert db.execute("SELECT v FROM t").fetchall() == [(42,)]


def test_a_failing_step_leaves_the_last_complete_one(tmp_path: Path) -> None:
    db = _db(tmp_path / "x.db")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        migrate(db, {1: "CREATE TABLE t (v INTEGER)", 2: broken}, store="x")
    assert schema_version(db) == 1
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)  # step 2 rolled back
    assert migrate(db, {1: "CREATE TABLE t (v INTEGER)", 2: "INSERT INTO t VALUES (7)"}, store="x") == 2


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = _db(tmp_path / "x.db")
    migrate(db, {1: "CREATE TABLE a (v)", 2: "CREATE TABLE b (v)"}, store="x")
    with pytest.raises(RuntimeError, match="schema version 2"):
        migrate(db, {1: "CREATE TABLE a (v)"}, store="x")


def test_steps_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        migrate(_db(tmp_path / "x.db"), {1: "SELECT 1", 3: "SELECT 1"}, store="x")


_OLD_TRAINING = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, request_id TEXT UNIQUE,
    state INTEGER NOT NULL, phase TEXT NOT NULL DEFAULT '', labels TEXT NOT NULL DEFAULT '{}', job BLOB NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, pause_requested INTEGER NOT NULL DEFAULT 0,
    pending_adjust TEXT NOT NULL DEFAULT '{}', queue_entry TEXT NOT NULL DEFAULT '');
CREATE TABLE events (job_id TEXT NOT NULL, sequence INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)) WITHOUT ROWID;
CREATE TABLE metric_points (job_id TEXT NOT NULL, sequence INTEGER NOT NULL, kind INTEGER NOT NULL,
    step INTEGER NOT NULL, value REAL NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job_id, sequence)) WITHOUT ROWID;
CREATE TABLE checkpoints (job_id TEXT NOT NULL, step INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (job_id, step)) WITHOUT ROWID;
INSERT INTO meta VALUES ('epoch', 'oldepoch'), ('metric_points', 'v1');
"""


def test_a_training_store_from_before_the_runner_keeps_its_jobs_and_gains_creators(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    old = _db(path)
    old.executescript(_OLD_TRAINING)
    job = job_pb.TrainingJob(name="trainingJobs/old", state=job_pb.TRAINING_JOB_STATE_SUCCEEDED)
    old.execute("INSERT INTO jobs(id, state, job) VALUES ('old', ?, ?)", (job.state, job.SerializeToString()))
    old.close()

    store = Store(path)
    try:
        assert store.epoch == "oldepoch"
        assert store.get("old").job.creator == ""  # unknown: operators and above only
        created, _, _ = store.create(job_pb.TrainingJob(creator="alice"), "new", "")
        assert created.job.creator == "alice"
        columns = [r[1] for r in store._db.execute("PRAGMA table_info(jobs)")]
        assert "creator" in columns
        assert store._db.execute("SELECT creator FROM jobs WHERE id='new'").fetchone() == ("alice",)
        assert schema_version(store._db) == max(training_store._MIGRATIONS)  # every step, later ones too
    finally:
        store.close()
    Store(path).close()  # opening again applies nothing and fails nothing


def test_a_forge_store_from_before_the_runner_gains_creators(tmp_path: Path) -> None:
    path = tmp_path / "forge.db"
    old = _db(path)
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (id TEXT PRIMARY KEY, phase TEXT NOT NULL, state INTEGER NOT NULL,
            request_id TEXT UNIQUE, create_us INTEGER NOT NULL, saga_data TEXT NOT NULL DEFAULT '{}',
            snapshot BLOB NOT NULL);
        CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, event BLOB NOT NULL,
            PRIMARY KEY (run_id, seq));
        INSERT INTO meta VALUES ('epoch', 'e1');
    """)
    run = pr.PhaseRun(name="phaseRuns/old", phase="phases/cognate")
    old.execute("INSERT INTO runs (id, phase, state, create_us, snapshot) VALUES ('old', 'phases/cognate', 0, 1, ?)",
                (run.SerializeToString(),))
    old.close()

    store = RunStore(path)
    try:
        assert store.epoch == "e1"
        assert store.get("old") is not None and store.get("old").creator == ""
        new = pr.PhaseRun(name="phaseRuns/new", phase="phases/cognate", creator="bob")
        assert store.insert(new)
        assert store._db.execute("SELECT creator FROM runs WHERE id='new'").fetchone() == ("bob",)
        assert schema_version(store._db) == max(forge_store._MIGRATIONS)
    finally:
        store.close()
