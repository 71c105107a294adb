"""SQLite storage of alert rules, alerts and the alert event history.

One file, ``<data_dir>/monitoring.sqlite3`` (``:memory:`` without a data dir). Rows keep
the protobuf message serialized next to the columns used for lookups. The event history
has its own epoch (a random token stored with it): it only changes when the database
is new, i.e. when the history was lost. The methods block (WAL mode, synchronous=NORMAL;
alerts are rewritten about once a second while open): async code calls them on the
store's own thread, :attr:`MonitoringStore.db` (a
:class:`~services.shared.dbthread.DatabaseThread`, one call at a time, in order), never
on the event loop. The schema is versioned (``_MIGRATIONS``,
services/shared/migrations.py).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from agentforge.monitoring.v1 import alert_pb2, alert_rule_pb2
from services.shared.dbthread import DatabaseThread
from services.shared.migrations import Step, migrate

__all__ = ["MonitoringStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rules (
    name TEXT PRIMARY KEY, request_id TEXT UNIQUE, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    name TEXT PRIMARY KEY, rule TEXT NOT NULL, component TEXT NOT NULL,
    state INTEGER NOT NULL, fire_time REAL NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (state, rule, component);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
"""

#: The store's schema, step by step (services/shared/migrations.py). Append only.
_MIGRATIONS: dict[int, Step] = {
    1: _SCHEMA,  # idempotent: stores made before versioned migrations adopt it as is
}


class MonitoringStore:
    """Rules, alerts and alert events."""

    def __init__(self, data_dir: Path | None) -> None:
        if data_dir is None:
            path = ":memory:"
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = str(data_dir / "monitoring.sqlite3")
        # Opened here, used on ``db``'s thread: one thread at a time, never two at once.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        #: The store's thread: ``await store.db(store.put_alert, alert, key)``.
        self.db = DatabaseThread("monitoring-db")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        migrate(self._db, _MIGRATIONS, store=f"monitoring store {path}")
        epoch = self.meta("epoch")
        if epoch is None:
            epoch = secrets.token_hex(8)
            self.set_meta("epoch", epoch)
        self.epoch = epoch

    def close(self) -> None:
        """Wait for the calls already submitted to :attr:`db`, then close the database."""
        self.db.close()
        self._db.close()

    # -- meta ----------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- rules ---------------------------------------------------------------------
    def put_rule(self, rule: alert_rule_pb2.AlertRule, request_id: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO rules (name, request_id, data) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET data = excluded.data",
            (rule.name, request_id or None, rule.SerializeToString()),
        )

    def rule(self, name: str) -> alert_rule_pb2.AlertRule | None:
        row = self._db.execute("SELECT data FROM rules WHERE name = ?", (name,)).fetchone()
        return None if row is None else alert_rule_pb2.AlertRule.FromString(row[0])

    def rule_by_request_id(self, request_id: str) -> alert_rule_pb2.AlertRule | None:
        row = self._db.execute("SELECT data FROM rules WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else alert_rule_pb2.AlertRule.FromString(row[0])

    def rules(self) -> list[alert_rule_pb2.AlertRule]:
        rows = self._db.execute("SELECT data FROM rules ORDER BY name").fetchall()
        return [alert_rule_pb2.AlertRule.FromString(r[0]) for r in rows]

    def delete_rule(self, name: str) -> bool:
        return self._db.execute("DELETE FROM rules WHERE name = ?", (name,)).rowcount > 0

    # -- alerts --------------------------------------------------------------------
    def put_alert(self, alert: alert_pb2.Alert, component: str) -> None:
        self._db.execute(
            "INSERT INTO alerts (name, rule, component, state, fire_time, data) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET state = excluded.state, data = excluded.data",
            (alert.name, alert.rule, component, alert.state,
             alert.fire_time.ToNanoseconds() / 1e9, alert.SerializeToString()),
        )

    def alert(self, name: str) -> alert_pb2.Alert | None:
        row = self._db.execute("SELECT data FROM alerts WHERE name = ?", (name,)).fetchone()
        return None if row is None else alert_pb2.Alert.FromString(row[0])

    def alerts(self) -> list[alert_pb2.Alert]:
        """All alerts, newest fire time first."""
        rows = self._db.execute("SELECT data FROM alerts ORDER BY fire_time DESC, name").fetchall()
        return [alert_pb2.Alert.FromString(r[0]) for r in rows]

    def open_alerts(self) -> Iterator[tuple[str, str, alert_pb2.Alert]]:
        """(rule, component, alert) of alerts not RESOLVED."""
        rows = self._db.execute(
            "SELECT rule, component, data FROM alerts WHERE state != ?", (alert_pb2.ALERT_STATE_RESOLVED,)
        ).fetchall()
        for rule, component, data in rows:
            yield str(rule), str(component), alert_pb2.Alert.FromString(data)

    # -- events --------------------------------------------------------------------
    def append_event(self, event: alert_pb2.AlertEvent, keep: int) -> int:
        """Store an event (without sequence/cursor/epoch); returns its sequence."""
        seq = int(self._db.execute("INSERT INTO events (data) VALUES (?)", (event.SerializeToString(),)).lastrowid or 0)
        self._db.execute("DELETE FROM events WHERE seq <= ?", (seq - keep,))
        return seq

    def events_after(self, seq: int, limit: int = 500) -> list[tuple[int, alert_pb2.AlertEvent]]:
        rows = self._db.execute(
            "SELECT seq, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [(int(s), alert_pb2.AlertEvent.FromString(d)) for s, d in rows]

    def oldest_event_seq(self) -> int | None:
        row = self._db.execute("SELECT MIN(seq) FROM events").fetchone()
        return None if row is None or row[0] is None else int(row[0])
