"""The SQLite store on its own: migrations, WAL, durability across reopen, outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.model.store import Lineage, Registry


async def test_state_survives_reopen_with_schema_version_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    store = Registry(db)
    await store.create_model("keep", tags=["x"])
    version, created = await store.create_version("keep", lineage=Lineage(checkpoint="trainingJobs/j/checkpoints/c"),
                                                  checkpoint_key="trainingJobs/j/checkpoints/c")
    assert created
    again, created = await store.create_version("keep", checkpoint_key="trainingJobs/j/checkpoints/c")
    assert not created and again.version == version.version
    assert [e.kind for e in await store.pending_events()] == ["version_created"]
    store.close()

    reopened = Registry(db)
    assert reopened.schema_version() == 1
    model = await reopened.get_model("keep")
    assert (model.tags, model.version_count, model.latest_version) == (["x"], 1, 1)
    assert (await reopened.get_version("keep", 1)).lineage.checkpoint == "trainingJobs/j/checkpoints/c"
    assert len(await reopened.pending_events()) == 1  # the outbox is durable too
    reopened.close()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
