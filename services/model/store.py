"""The registry's domain records and their SQLite store.

One SQLite database (WAL mode) holds models, versions, aliases, exports and an outbox
of events still to publish. Every call runs in one transaction on the store's own
thread (:class:`~services.shared.dbthread.DatabaseThread`, in the order the calls were
made) behind a lock, so the event loop never blocks on disk.

States and formats are the proto enum value names without their prefix
(``"READY"``, ``"STATE_DICT"``); :mod:`services.model.convert` maps them.

Errors are the shared ``ForgeError`` tree: NotFound, AlreadyExists, Aborted (etag),
FailedPrecondition, InvalidArgument (bad page token).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import trace

from services.shared.dbthread import DatabaseThread
from services.shared.tracing import traceparent_of
from services.shared.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.shared.paging import decode_page_token, encode_page_token, query_fingerprint
from services.shared.paging import page_size as resolve_page_size
from services.shared.migrations import Step, migrate, schema_version

__all__ = [
    "ArtifactRecord",
    "ExportRecord",
    "Lineage",
    "ModelRecord",
    "OutboxEntry",
    "Registry",
    "VersionRecord",
    "now_us",
]

T = TypeVar("T")

#: The registry's schema, step by step (services/shared/migrations.py). Append only.
_MIGRATIONS: dict[int, Step] = {
    1: """
    CREATE TABLE models (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        labels TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '[]',
        next_version INTEGER NOT NULL DEFAULT 1,
        create_time INTEGER NOT NULL,
        update_time INTEGER NOT NULL,
        etag TEXT NOT NULL,
        request_id TEXT NOT NULL DEFAULT ''
    );
    CREATE UNIQUE INDEX models_request_id ON models(request_id) WHERE request_id != '';
    CREATE TABLE versions (
        model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        metrics TEXT NOT NULL DEFAULT '{}',
        parameters TEXT NOT NULL DEFAULT '{}',
        lineage TEXT NOT NULL DEFAULT '{}',
        state TEXT NOT NULL,
        create_time INTEGER NOT NULL,
        update_time INTEGER NOT NULL,
        etag TEXT NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        checkpoint_key TEXT,
        artifact TEXT NOT NULL,
        PRIMARY KEY (model_id, version)
    );
    CREATE UNIQUE INDEX versions_request_id ON versions(model_id, request_id) WHERE request_id != '';
    CREATE UNIQUE INDEX versions_checkpoint ON versions(checkpoint_key) WHERE checkpoint_key IS NOT NULL;
    CREATE TABLE aliases (
        model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        PRIMARY KEY (model_id, alias)
    );
    CREATE TABLE exports (
        model_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        format TEXT NOT NULL,
        state TEXT NOT NULL,
        sha256 TEXT NOT NULL DEFAULT '',
        size_bytes INTEGER NOT NULL DEFAULT 0,
        content_type TEXT NOT NULL DEFAULT '',
        source_sha256 TEXT NOT NULL DEFAULT '',
        error_code INTEGER NOT NULL DEFAULT 0,
        error_message TEXT NOT NULL DEFAULT '',
        create_time INTEGER NOT NULL,
        complete_time INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model_id, version, format),
        FOREIGN KEY (model_id, version) REFERENCES versions(model_id, version) ON DELETE CASCADE
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        data TEXT NOT NULL,
        create_time INTEGER NOT NULL
    );
    """,
}



def now_us() -> int:
    return time.time_ns() // 1000


def _etag() -> str:
    return uuid.uuid4().hex[:20]


# --------------------------------------------------------------------------- records
@dataclass
class Lineage:
    training_job: str = ""
    checkpoint: str = ""
    phase_run: str = ""
    phase: str = ""
    parent_versions: list[str] = field(default_factory=list)
    merge_method: str = ""


@dataclass
class ArtifactRecord:
    """The weights file of a version. ``state``: PENDING, UPLOADING, READY, FAILED."""

    state: str = "PENDING"
    sha256: str = ""
    size_bytes: int = 0
    committed_bytes: int = 0
    content_type: str = ""
    format: str = ""
    error_code: int = 0
    error_message: str = ""
    complete_time: int = 0


@dataclass
class ModelRecord:
    id: str
    display_name: str
    description: str
    labels: dict[str, str]
    tags: list[str]
    aliases: dict[str, int]
    latest_version: int | None
    version_count: int
    create_time: int
    update_time: int
    etag: str
    request_id: str

    @property
    def name(self) -> str:
        return f"models/{self.id}"


@dataclass
class VersionRecord:
    """A version. ``state``: REGISTERING, READY, FAILED."""

    model_id: str
    version: int
    description: str
    tags: list[str]
    metrics: dict[str, float]
    parameters: dict[str, str]
    lineage: Lineage
    artifact: ArtifactRecord
    aliases: list[str]
    state: str
    create_time: int
    update_time: int
    etag: str
    request_id: str

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}"


@dataclass
class ExportRecord:
    """An export. ``state``: PENDING, RUNNING, SUCCEEDED, FAILED."""

    model_id: str
    version: int
    format: str
    state: str
    sha256: str = ""
    size_bytes: int = 0
    content_type: str = ""
    source_sha256: str = ""
    error_code: int = 0
    error_message: str = ""
    create_time: int = 0
    complete_time: int = 0

    @property
    def export_id(self) -> str:
        return self.format.lower().replace("_", "-")

    @property
    def name(self) -> str:
        return f"models/{self.model_id}/versions/{self.version}/exports/{self.export_id}"


@dataclass(frozen=True)
class OutboxEntry:
    """An event committed with the change that caused it, waiting to be published."""

    id: int
    event_id: str
    kind: str  # "version_created" | "alias_moved"
    subject: str
    data: dict[str, Any]
    create_time: int


# --------------------------------------------------------------------------- paging
def _json_key(key: str) -> str:
    """A JSON path selecting ``key`` of an object (keys are pattern-checked, no quotes)."""
    return '$."' + key.replace('"', "") + '"'


# --------------------------------------------------------------------------- registry
class Registry:
    """Models, versions, aliases, exports and the outbox, in one SQLite database."""

    def __init__(self, db_path: Path, *, on_event: Callable[[], None] | None = None) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        #: The store's thread: every ``_run`` transaction, and the outbox relay's calls.
        self.db = DatabaseThread("registry-db")
        self._on_event = on_event
        self._emitted = False
        #: Bumped by every committed write transaction (before the write's caller gets its
        #: result): a value read before a read began says whether that read may be stale.
        #: This process is the database's only writer, so readers can cache on it.
        self.generation = 0
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    def set_event_listener(self, on_event: Callable[[], None] | None) -> None:
        """Called (on the writer's thread) after a transaction added outbox entries."""
        self._on_event = on_event

    def close(self) -> None:
        """Wait for the calls already submitted, then close the database."""
        self.db.close()
        with self._lock:
            self._conn.close()

    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._conn)

    def _migrate(self) -> None:
        migrate(self._conn, _MIGRATIONS, store="registry.db")

    # -- plumbing ---------------------------------------------------------------
    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        return await self.db(self._tx, fn, write)

    def _tx(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            conn = self._conn
            self._emitted = False
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
                if write:
                    self.generation += 1
            except BaseException:
                conn.execute("ROLLBACK")
                self._emitted = False
                raise
            emitted, self._emitted = self._emitted, False
        if emitted and self._on_event is not None:
            self._on_event()
        return result

    def _emit(self, conn: sqlite3.Connection, kind: str, subject: str, data: Mapping[str, Any]) -> None:
        record = dict(data)
        # The trace of the change (the store's thread runs in the caller's context): the
        # event is published later by the relay, as part of that trace.
        traceparent = traceparent_of(trace.get_current_span())
        if traceparent is not None:
            record["traceparent"] = traceparent
        conn.execute(
            "INSERT INTO outbox (event_id, kind, subject, data, create_time) VALUES (?, ?, ?, ?, ?)",
            (uuid.uuid4().hex, kind, subject, json.dumps(record), now_us()),
        )
        self._emitted = True

    # -- row mapping --------------------------------------------------------------
    @staticmethod
    def _model_row(conn: sqlite3.Connection, model_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise NotFound(f"models/{model_id} not found", reason="MODEL_NOT_FOUND",
                           metadata={"name": f"models/{model_id}"})
        return row

    @staticmethod
    def _to_model(conn: sqlite3.Connection, row: sqlite3.Row) -> ModelRecord:
        aliases = {r["alias"]: r["version"] for r in conn.execute(
            "SELECT alias, version FROM aliases WHERE model_id = ? ORDER BY alias", (row["id"],))}
        count, latest = conn.execute(
            "SELECT COUNT(*), MAX(version) FROM versions WHERE model_id = ?", (row["id"],)).fetchone()
        return ModelRecord(
            id=row["id"], display_name=row["display_name"], description=row["description"],
            labels=json.loads(row["labels"]), tags=json.loads(row["tags"]), aliases=aliases,
            latest_version=latest, version_count=count, create_time=row["create_time"],
            update_time=row["update_time"], etag=row["etag"], request_id=row["request_id"],
        )

    @staticmethod
    def _to_version(conn: sqlite3.Connection, row: sqlite3.Row, aliases: list[str] | None = None) -> VersionRecord:
        """``aliases``: the version's, when the caller already read them (lists do, in one query)."""
        if aliases is None:
            aliases = [r[0] for r in conn.execute(
                "SELECT alias FROM aliases WHERE model_id = ? AND version = ? ORDER BY alias",
                (row["model_id"], row["version"]))]
        return VersionRecord(
            model_id=row["model_id"], version=row["version"], description=row["description"],
            tags=json.loads(row["tags"]), metrics=json.loads(row["metrics"]),
            parameters=json.loads(row["parameters"]), lineage=Lineage(**json.loads(row["lineage"])),
            artifact=ArtifactRecord(**json.loads(row["artifact"])), aliases=aliases, state=row["state"],
            create_time=row["create_time"], update_time=row["update_time"], etag=row["etag"],
            request_id=row["request_id"],
        )

    @staticmethod
    def _check_etag(kind: str, current: str, given: str) -> None:
        if given and given != current:
            raise Aborted(f"{kind} changed since it was read (etag mismatch)", reason="ETAG_MISMATCH",
                          metadata={"etag": current})

    def _touch_model(self, conn: sqlite3.Connection, model_id: str) -> None:
        conn.execute("UPDATE models SET etag = ?, update_time = ? WHERE id = ?", (_etag(), now_us(), model_id))

    # -- models -------------------------------------------------------------------
    async def create_model(
        self, model_id: str, *, display_name: str = "", description: str = "",
        labels: Mapping[str, str] | None = None, tags: Iterable[str] = (), request_id: str = "",
        if_absent: bool = False,
    ) -> ModelRecord:
        """Create ``models/{model_id}`` (a generated id when empty).

        Retried ``request_id`` returns the first result. ``if_absent`` returns an existing
        model instead of raising ALREADY_EXISTS.
        """

        def tx(conn: sqlite3.Connection) -> ModelRecord:
            if request_id:
                row = conn.execute("SELECT * FROM models WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return self._to_model(conn, row)
            mid = model_id or "m-" + uuid.uuid4().hex[:16]
            row = conn.execute("SELECT * FROM models WHERE id = ?", (mid,)).fetchone()
            if row is not None:
                if if_absent:
                    return self._to_model(conn, row)
                raise AlreadyExists(f"models/{mid} already exists", reason="MODEL_ALREADY_EXISTS",
                                    metadata={"name": f"models/{mid}"})
            t = now_us()
            conn.execute(
                "INSERT INTO models (id, display_name, description, labels, tags, create_time, update_time,"
                " etag, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (mid, display_name, description, json.dumps(dict(labels or {})), json.dumps(list(tags)),
                 t, t, _etag(), request_id),
            )
            return self._to_model(conn, self._model_row(conn, mid))

        return await self._run(tx)

    async def get_model(self, model_id: str) -> ModelRecord:
        return await self._run(lambda c: self._to_model(c, self._model_row(c, model_id)), write=False)

    async def list_models(
        self, *, page_size: int = 0, page_token: str = "", tags: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> tuple[list[ModelRecord], str]:
        """Newest first; only models with all ``tags`` and all ``labels``."""
        tags, labels = sorted(tags), dict(sorted((labels or {}).items()))
        fp = query_fingerprint("models", tags, labels)
        after = decode_page_token(page_token, fp)
        size = resolve_page_size(page_size)

        def tx(conn: sqlite3.Connection) -> tuple[list[ModelRecord], str]:
            where, args = ["1=1"], []
            for tag in tags:
                where.append("EXISTS (SELECT 1 FROM json_each(models.tags) WHERE value = ?)")
                args.append(tag)
            for key, value in labels.items():
                where.append("json_extract(models.labels, ?) = ?")
                args += [_json_key(key), value]
            if after is not None:
                where.append("seq < ?")
                args.append(int(after))
            rows = conn.execute(
                f"SELECT * FROM models WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                (*args, size + 1)).fetchall()
            token = encode_page_token(rows[size - 1]["seq"], fp) if len(rows) > size else ""
            return [self._to_model(conn, r) for r in rows[:size]], token

        return await self._run(tx, write=False)

    async def update_model(self, model_id: str, changes: Mapping[str, Any], *, etag: str = "") -> ModelRecord:
        """Replace the given fields (display_name, description, labels, tags)."""
        allowed = {"display_name", "description", "labels", "tags"}
        if not set(changes) <= allowed:
            raise InvalidArgument("bad update_mask", [("update_mask", f"unknown paths {sorted(set(changes) - allowed)}")])

        def tx(conn: sqlite3.Connection) -> ModelRecord:
            row = self._model_row(conn, model_id)
            self._check_etag(f"models/{model_id}", row["etag"], etag)
            sets, args = ["etag = ?", "update_time = ?"], [_etag(), now_us()]
            for key, value in changes.items():
                sets.append(f"{key} = ?")
                args.append(json.dumps(dict(value)) if key == "labels" else
                            json.dumps(list(value)) if key == "tags" else value)
            conn.execute(f"UPDATE models SET {', '.join(sets)} WHERE id = ?", (*args, model_id))
            return self._to_model(conn, self._model_row(conn, model_id))

        return await self._run(tx)

    async def delete_model(self, model_id: str, *, force: bool = False, etag: str = "") -> list[int]:
        """Delete the model; returns the deleted version numbers (their files are the caller's)."""

        def tx(conn: sqlite3.Connection) -> list[int]:
            row = self._model_row(conn, model_id)
            self._check_etag(f"models/{model_id}", row["etag"], etag)
            versions = [r[0] for r in conn.execute("SELECT version FROM versions WHERE model_id = ?", (model_id,))]
            if versions and not force:
                raise FailedPrecondition(
                    f"models/{model_id} has {len(versions)} versions; delete them or pass force",
                    reason="MODEL_HAS_VERSIONS")
            conn.execute("DELETE FROM exports WHERE model_id = ?", (model_id,))
            conn.execute("DELETE FROM aliases WHERE model_id = ?", (model_id,))
            conn.execute("DELETE FROM versions WHERE model_id = ?", (model_id,))
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
            return versions

        return await self._run(tx)

    # -- versions -----------------------------------------------------------------
    def _version_row(self, conn: sqlite3.Connection, model_id: str, ref: str | int) -> sqlite3.Row:
        """Resolve a version id, an alias or ``latest`` (highest READY)."""
        self._model_row(conn, model_id)
        name = f"models/{model_id}/versions/{ref}"
        if isinstance(ref, int) or re.fullmatch(r"[1-9][0-9]*", ref):
            row = conn.execute("SELECT * FROM versions WHERE model_id = ? AND version = ?",
                               (model_id, int(ref))).fetchone()
        elif ref == "latest":
            row = conn.execute("SELECT * FROM versions WHERE model_id = ? AND state = 'READY'"
                               " ORDER BY version DESC LIMIT 1", (model_id,)).fetchone()
        else:
            row = conn.execute(
                "SELECT v.* FROM aliases a JOIN versions v ON v.model_id = a.model_id AND v.version = a.version"
                " WHERE a.model_id = ? AND a.alias = ?", (model_id, ref)).fetchone()
        if row is None:
            raise NotFound(f"{name} not found", reason="MODEL_VERSION_NOT_FOUND", metadata={"name": name})
        return row

    async def create_version(
        self, model_id: str, *, description: str = "", tags: Iterable[str] = (),
        metrics: Mapping[str, float] | None = None, parameters: Mapping[str, str] | None = None,
        lineage: Lineage | None = None, request_id: str = "", checkpoint_key: str | None = None,
    ) -> tuple[VersionRecord, bool]:
        """Number and store a new REGISTERING version; returns it and whether it is new.

        A retried ``request_id`` (per model) or an already registered ``checkpoint_key``
        returns the existing version instead of numbering a second one.
        """

        def tx(conn: sqlite3.Connection) -> tuple[VersionRecord, bool]:
            model = self._model_row(conn, model_id)
            if request_id:
                row = conn.execute("SELECT * FROM versions WHERE model_id = ? AND request_id = ?",
                                   (model_id, request_id)).fetchone()
                if row is not None:
                    return self._to_version(conn, row), False
            if checkpoint_key:
                row = conn.execute("SELECT * FROM versions WHERE checkpoint_key = ?", (checkpoint_key,)).fetchone()
                if row is not None:
                    return self._to_version(conn, row), False
            number = model["next_version"]
            t = now_us()
            conn.execute(
                "INSERT INTO versions (model_id, version, description, tags, metrics, parameters, lineage, state,"
                " create_time, update_time, etag, request_id, checkpoint_key, artifact)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'REGISTERING', ?, ?, ?, ?, ?, ?)",
                (model_id, number, description, json.dumps(list(tags)), json.dumps(dict(metrics or {})),
                 json.dumps(dict(parameters or {})), json.dumps(dataclasses.asdict(lineage or Lineage())),
                 t, t, _etag(), request_id, checkpoint_key, json.dumps(dataclasses.asdict(ArtifactRecord()))),
            )
            conn.execute("UPDATE models SET next_version = ?, etag = ?, update_time = ? WHERE id = ?",
                         (number + 1, _etag(), t, model_id))
            self._emit(conn, "version_created", f"models/{model_id}/versions/{number}",
                       {"model_id": model_id, "version": number})
            return self._to_version(conn, self._version_row(conn, model_id, number)), True

        return await self._run(tx)

    async def get_version(self, model_id: str, ref: str | int) -> VersionRecord:
        return await self._run(lambda c: self._to_version(c, self._version_row(c, model_id, ref)), write=False)

    async def find_version_by_checkpoint(self, checkpoint_key: str) -> VersionRecord | None:
        def tx(conn: sqlite3.Connection) -> VersionRecord | None:
            row = conn.execute("SELECT * FROM versions WHERE checkpoint_key = ?", (checkpoint_key,)).fetchone()
            return None if row is None else self._to_version(conn, row)

        return await self._run(tx, write=False)

    async def list_versions(
        self, model_id: str, *, page_size: int = 0, page_token: str = "", tags: Iterable[str] = (),
        alias: str = "", states: Iterable[str] = (), order_by: str = "",
    ) -> tuple[list[VersionRecord], str]:
        """Filtered by all ``tags``, ``alias`` and any of ``states``; ordered per ``order_by``."""
        tags, states = sorted(tags), sorted(states)
        order_by = order_by.strip() or "create_time desc"
        key, _, direction = order_by.partition(" ")
        desc = direction == "desc"
        fp = query_fingerprint("versions", model_id, tags, alias, states, order_by)
        position = decode_page_token(page_token, fp)
        size = resolve_page_size(page_size)

        def tx(conn: sqlite3.Connection) -> tuple[list[VersionRecord], str]:
            self._model_row(conn, model_id)
            where, args = ["v.model_id = ?"], [model_id]
            for tag in tags:
                where.append("EXISTS (SELECT 1 FROM json_each(v.tags) WHERE value = ?)")
                args.append(tag)
            if states:
                where.append(f"v.state IN ({','.join('?' * len(states))})")
                args += states
            if alias == "latest":
                where.append("v.version = (SELECT MAX(version) FROM versions WHERE model_id = ? AND state = 'READY')")
                args.append(model_id)
            elif alias:
                where.append("v.version = (SELECT version FROM aliases WHERE model_id = ? AND alias = ?)")
                args += [model_id, alias]
            if key == "create_time":
                if position is not None:
                    where.append("v.version < ?" if desc else "v.version > ?")
                    args.append(int(position))
                order, offset = f"v.version {'DESC' if desc else 'ASC'}", 0
            else:
                metric = _json_key(key.removeprefix("metrics."))
                order = (f"json_extract(v.metrics, '{metric}') IS NULL, "
                         f"json_extract(v.metrics, '{metric}') {'DESC' if desc else 'ASC'}, v.version DESC")
                offset = int(position or 0)
            rows = conn.execute(
                f"SELECT v.* FROM versions v WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ? OFFSET ?",
                (*args, size + 1, offset)).fetchall()
            token = ""
            if len(rows) > size:
                token = encode_page_token(rows[size - 1]["version"] if key == "create_time" else offset + size, fp)
            by_version: dict[int, list[str]] = {}
            for name, number in conn.execute(
                    "SELECT alias, version FROM aliases WHERE model_id = ? ORDER BY alias", (model_id,)):
                by_version.setdefault(number, []).append(name)
            return [self._to_version(conn, r, by_version.get(r["version"], [])) for r in rows[:size]], token

        return await self._run(tx, write=False)

    async def update_version(
        self, model_id: str, version: int, changes: Mapping[str, Any], *, etag: str = "",
    ) -> VersionRecord:
        """Replace description/tags/metrics/parameters; ``metrics.<k>`` sets (or, None, removes) one metric."""

        def tx(conn: sqlite3.Connection) -> VersionRecord:
            row = self._version_row(conn, model_id, version)
            self._check_etag(f"models/{model_id}/versions/{version}", row["etag"], etag)
            values: dict[str, Any] = {
                "description": row["description"], "tags": json.loads(row["tags"]),
                "metrics": json.loads(row["metrics"]), "parameters": json.loads(row["parameters"]),
            }
            for path, value in changes.items():
                if path.startswith("metrics."):
                    k = path.removeprefix("metrics.")
                    if value is None:
                        values["metrics"].pop(k, None)
                    else:
                        values["metrics"][k] = float(value)
                elif path in values:
                    values[path] = value
                else:
                    raise InvalidArgument("bad update_mask", [("update_mask", f"unknown path {path}")])
            conn.execute(
                "UPDATE versions SET description = ?, tags = ?, metrics = ?, parameters = ?, etag = ?,"
                " update_time = ? WHERE model_id = ? AND version = ?",
                (values["description"], json.dumps(list(values["tags"])), json.dumps(dict(values["metrics"])),
                 json.dumps(dict(values["parameters"])), _etag(), now_us(), model_id, version))
            return self._to_version(conn, self._version_row(conn, model_id, version))

        return await self._run(tx)

    async def delete_version(self, model_id: str, version: int, *, force: bool = False, etag: str = "") -> None:
        def tx(conn: sqlite3.Connection) -> None:
            row = self._version_row(conn, model_id, version)
            self._check_etag(f"models/{model_id}/versions/{version}", row["etag"], etag)
            aliases = [r[0] for r in conn.execute(
                "SELECT alias FROM aliases WHERE model_id = ? AND version = ?", (model_id, version))]
            if aliases and not force:
                raise FailedPrecondition(
                    f"aliases {aliases} point at models/{model_id}/versions/{version}; move them or pass force",
                    reason="VERSION_HAS_ALIASES", metadata={"aliases": ",".join(aliases)})
            for alias in aliases:
                self._emit(conn, "alias_moved", f"models/{model_id}",
                           {"model_id": model_id, "alias": alias, "from": version, "to": None})
            conn.execute("DELETE FROM aliases WHERE model_id = ? AND version = ?", (model_id, version))
            conn.execute("DELETE FROM exports WHERE model_id = ? AND version = ?", (model_id, version))
            conn.execute("DELETE FROM versions WHERE model_id = ? AND version = ?", (model_id, version))
            self._touch_model(conn, model_id)

        await self._run(tx)

    async def set_artifact(
        self, model_id: str, version: int, artifact: ArtifactRecord, *, state: str | None = None,
    ) -> VersionRecord:
        """Store the artifact's state (and optionally the version's)."""

        def tx(conn: sqlite3.Connection) -> VersionRecord:
            row = self._version_row(conn, model_id, version)
            conn.execute(
                "UPDATE versions SET artifact = ?, state = ?, etag = ?, update_time = ? WHERE model_id = ? AND version = ?",
                (json.dumps(dataclasses.asdict(artifact)), state or row["state"], _etag(), now_us(), model_id, version))
            return self._to_version(conn, self._version_row(conn, model_id, version))

        return await self._run(tx)

    async def set_committed(self, model_id: str, version: int, committed: int) -> None:
        """Persist upload progress (no etag change: it is not a user-visible edit)."""

        def tx(conn: sqlite3.Connection) -> None:
            row = self._version_row(conn, model_id, version)
            artifact = json.loads(row["artifact"])
            artifact["committed_bytes"] = committed
            artifact["state"] = "UPLOADING"
            conn.execute("UPDATE versions SET artifact = ? WHERE model_id = ? AND version = ?",
                         (json.dumps(artifact), model_id, version))

        await self._run(tx)

    # -- aliases --------------------------------------------------------------------
    async def set_alias(self, model_id: str, alias: str, version: int, *, etag: str = "") -> ModelRecord:
        def tx(conn: sqlite3.Connection) -> ModelRecord:
            model = self._model_row(conn, model_id)
            self._check_etag(f"models/{model_id}", model["etag"], etag)
            target = self._version_row(conn, model_id, version)
            if target["state"] != "READY":
                raise FailedPrecondition(f"models/{model_id}/versions/{version} is {target['state']}, not READY",
                                         reason="VERSION_NOT_READY")
            prev = conn.execute("SELECT version FROM aliases WHERE model_id = ? AND alias = ?",
                                (model_id, alias)).fetchone()
            if prev is None or prev[0] != version:
                conn.execute("INSERT OR REPLACE INTO aliases (model_id, alias, version) VALUES (?, ?, ?)",
                             (model_id, alias, version))
                self._touch_model(conn, model_id)
                self._emit(conn, "alias_moved", f"models/{model_id}",
                           {"model_id": model_id, "alias": alias, "from": prev[0] if prev else None, "to": version})
            return self._to_model(conn, self._model_row(conn, model_id))

        return await self._run(tx)

    async def delete_alias(self, model_id: str, alias: str, *, etag: str = "") -> ModelRecord:
        def tx(conn: sqlite3.Connection) -> ModelRecord:
            model = self._model_row(conn, model_id)
            self._check_etag(f"models/{model_id}", model["etag"], etag)
            prev = conn.execute("SELECT version FROM aliases WHERE model_id = ? AND alias = ?",
                                (model_id, alias)).fetchone()
            if prev is None:
                raise NotFound(f"models/{model_id} has no alias {alias!r}", reason="ALIAS_NOT_FOUND",
                               metadata={"alias": alias})
            conn.execute("DELETE FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias))
            self._touch_model(conn, model_id)
            self._emit(conn, "alias_moved", f"models/{model_id}",
                       {"model_id": model_id, "alias": alias, "from": prev[0], "to": None})
            return self._to_model(conn, self._model_row(conn, model_id))

        return await self._run(tx)

    # -- exports --------------------------------------------------------------------
    @staticmethod
    def _to_export(row: sqlite3.Row) -> ExportRecord:
        return ExportRecord(**{k: row[k] for k in row.keys()})

    async def get_export(self, model_id: str, version: int, fmt: str) -> ExportRecord:
        def tx(conn: sqlite3.Connection) -> ExportRecord:
            self._version_row(conn, model_id, version)
            row = conn.execute("SELECT * FROM exports WHERE model_id = ? AND version = ? AND format = ?",
                               (model_id, version, fmt)).fetchone()
            if row is None:
                name = f"models/{model_id}/versions/{version}/exports/{fmt.lower().replace('_', '-')}"
                raise NotFound(f"{name} not found", reason="EXPORT_NOT_FOUND", metadata={"name": name})
            return self._to_export(row)

        return await self._run(tx, write=False)

    async def start_export(self, model_id: str, version: int, fmt: str, *, force: bool) -> tuple[ExportRecord, bool]:
        """Return the export of ``fmt``, creating (or, with ``force``, resetting) it as PENDING.

        The second value says whether a conversion must run.
        """

        def tx(conn: sqlite3.Connection) -> tuple[ExportRecord, bool]:
            v = self._version_row(conn, model_id, version)
            if v["state"] != "READY":
                raise FailedPrecondition(f"models/{model_id}/versions/{version} is {v['state']}, not READY",
                                         reason="VERSION_NOT_READY")
            row = conn.execute("SELECT * FROM exports WHERE model_id = ? AND version = ? AND format = ?",
                               (model_id, version, fmt)).fetchone()
            if row is not None and (not force or row["state"] in ("PENDING", "RUNNING")):
                return self._to_export(row), False
            conn.execute("INSERT OR REPLACE INTO exports (model_id, version, format, state, source_sha256, create_time)"
                         " VALUES (?, ?, ?, 'PENDING', ?, ?)",
                         (model_id, version, fmt, json.loads(v["artifact"])["sha256"], now_us()))
            row = conn.execute("SELECT * FROM exports WHERE model_id = ? AND version = ? AND format = ?",
                               (model_id, version, fmt)).fetchone()
            return self._to_export(row), True

        return await self._run(tx)

    async def update_export(self, record: ExportRecord) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE exports SET state = ?, sha256 = ?, size_bytes = ?, content_type = ?, error_code = ?,"
                " error_message = ?, complete_time = ? WHERE model_id = ? AND version = ? AND format = ?",
                (record.state, record.sha256, record.size_bytes, record.content_type, record.error_code,
                 record.error_message, record.complete_time, record.model_id, record.version, record.format))

        await self._run(tx)

    async def list_exports(
        self, model_id: str, version: int, *, page_size: int = 0, page_token: str = "",
    ) -> tuple[list[ExportRecord], str]:
        fp = query_fingerprint("exports", model_id, version)
        offset = int(decode_page_token(page_token, fp) or 0)
        size = resolve_page_size(page_size)

        def tx(conn: sqlite3.Connection) -> tuple[list[ExportRecord], str]:
            self._version_row(conn, model_id, version)
            rows = conn.execute(
                "SELECT * FROM exports WHERE model_id = ? AND version = ? ORDER BY create_time DESC, format"
                " LIMIT ? OFFSET ?", (model_id, version, size + 1, offset)).fetchall()
            token = encode_page_token(offset + size, fp) if len(rows) > size else ""
            return [self._to_export(r) for r in rows[:size]], token

        return await self._run(tx, write=False)

    async def unfinished_exports(self) -> list[ExportRecord]:
        """Exports left PENDING/RUNNING by a previous process."""

        def tx(conn: sqlite3.Connection) -> list[ExportRecord]:
            rows = conn.execute("SELECT * FROM exports WHERE state IN ('PENDING', 'RUNNING')").fetchall()
            return [self._to_export(r) for r in rows]

        return await self._run(tx, write=False)

    # -- outbox ---------------------------------------------------------------------
    # Relayed by the shared services.shared.outbox.OutboxRelay (services.model.events
    # builds the envelopes); these run on the store's thread (``run=store.db``).
    def outbox_entries(self, limit: int = 100) -> list[tuple[OutboxEntry, VersionRecord | None]]:
        """The oldest ``limit`` entries, in order, each with the version it announces as it
        is now (None: not a ``version_created`` entry, or the version is gone), read in one
        transaction. Blocking: call it on the store's thread."""

        def tx(conn: sqlite3.Connection) -> list[tuple[OutboxEntry, VersionRecord | None]]:
            out: list[tuple[OutboxEntry, VersionRecord | None]] = []
            for r in conn.execute("SELECT * FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall():
                entry = OutboxEntry(r["id"], r["event_id"], r["kind"], r["subject"], json.loads(r["data"]),
                                    r["create_time"])
                version = None
                if entry.kind == "version_created":
                    row = conn.execute("SELECT * FROM versions WHERE model_id = ? AND version = ?",
                                       (entry.data["model_id"], int(entry.data["version"]))).fetchone()
                    version = None if row is None else self._to_version(conn, row)
                out.append((entry, version))
            return out

        return self._tx(tx, False)

    def outbox_ack(self, ids: Iterable[int]) -> None:
        """Forget published entries (idempotent). Blocking: on the store's thread."""
        ids = [(i,) for i in ids]
        if ids:
            self._tx(lambda c: c.executemany("DELETE FROM outbox WHERE id = ?", ids), True)

    def outbox_size(self) -> int:
        """Entries not yet published (read on scrape, from the metrics thread)."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    async def pending_events(self, limit: int = 100) -> list[OutboxEntry]:
        """The oldest ``limit`` outbox entries (tests and tools; the relay uses :meth:`outbox_entries`)."""
        return [entry for entry, _ in await self.db(self.outbox_entries, limit)]
