"""Versioned schema migrations for the SQLite stores: one runner for every store.

A store declares its schema as numbered steps, ``{1: ..., 2: ..., ...}``; each step is
either SQL (one or more statements separated by ``;``) or a callable that gets the
connection (for data migrations, e.g. back-filling a new column from serialized
protos). :func:`migrate` applies the steps after the version the database records, each
in its own transaction together with its row in ``schema_version(version, applied)``
(``applied``: Unix microseconds), so a crash mid-way leaves the database at the last
complete step and the next start carries on. A database newer than the code (a version
this build does not know) is refused: running old code on it could lose data.

Steps are append-only: never edit a step that has shipped; add the next number. Two
branches that both add a step take consecutive numbers when they meet (renumber on
rebase; the later one moves).

Step 1 of a store that predates this runner must be idempotent (``CREATE TABLE IF NOT
EXISTS``) so an existing database without ``schema_version`` adopts the runner by
re-running it harmlessly.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping

__all__ = ["Step", "migrate", "schema_version"]

#: One migration step: SQL text or ``fn(connection)``.
Step = str | Callable[[sqlite3.Connection], None]

_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)"


def schema_version(db: sqlite3.Connection) -> int:
    """The last step applied to ``db`` (0: none)."""
    db.execute(_TABLE)
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def migrate(db: sqlite3.Connection, steps: Mapping[int, Step], *, store: str) -> int:
    """Bring ``db`` to the last of ``steps``; returns that version.

    ``db`` must be in autocommit mode (``isolation_level=None``): each step runs in a
    ``BEGIN IMMEDIATE`` transaction of its own. ``steps`` must be numbered 1..N without
    gaps. RuntimeError when ``db`` records a version above N (``store`` names it).
    """
    latest = max(steps, default=0)
    if sorted(steps) != list(range(1, latest + 1)):
        raise ValueError(f"{store}: migration steps must be numbered 1..N, got {sorted(steps)}")
    current = schema_version(db)
    if current > latest:
        raise RuntimeError(f"{store} has schema version {current}; this build knows up to {latest}")
    for version in range(current + 1, latest + 1):
        step = steps[version]
        db.execute("BEGIN IMMEDIATE")
        try:
            if (int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
                    >= version):  # another process sharing the file got here first
                db.execute("COMMIT")
                continue
            if callable(step):
                step(db)
            else:
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute("INSERT INTO schema_version(version, applied) VALUES (?, ?)",
                       (version, time.time_ns() // 1000))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return latest
