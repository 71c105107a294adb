"""Metric history below the RPC: LTTB downsampling and the store's metric_points."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.training.downsample import lttb_indices
from services.training.store import Store


def test_lttb_keeps_first_last_and_the_spike_and_returns_threshold_points() -> None:
    xs = list(range(1000))
    ys = [1.0] * 1000
    ys[537] = 50.0  # a spike every-k-th sampling would miss
    keep = lttb_indices(xs, ys, 20)
    assert len(keep) == 20 and keep[0] == 0 and keep[-1] == 999
    assert keep == sorted(set(keep)) and 537 in keep


def test_lttb_small_series_and_small_thresholds() -> None:
    assert lttb_indices([1, 2, 3], [1.0, 2.0, 3.0], 10) == [0, 1, 2]
    assert lttb_indices(list(range(10)), [0.0] * 10, 1) == [9]
    assert lttb_indices(list(range(10)), [0.0] * 10, 2) == [0, 9]
    assert len(lttb_indices(list(range(10)), [float("nan")] * 10, 5)) == 5
    with pytest.raises(ValueError):
        lttb_indices([1], [1.0], 0)


def _job(store: Store, job_id: str = "j1") -> None:
    job = job_pb.TrainingJob(name=f"trainingJobs/{job_id}", spec=job_pb.TrainingJobSpec(max_steps=100))
    store.create(job, job_id, "")


def _progress(step: int, loss: float) -> ev_pb.TrainingJobEvent:
    return ev_pb.TrainingJobEvent(progress=job_pb.TrainingProgress(step=step, train_loss=loss))


def test_points_follow_the_current_run_after_a_rewind(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    _job(store)
    store.append_events("j1", [_progress(s, 10.0 - s) for s in range(1, 6)])
    store.append_events("j1", [ev_pb.TrainingJobEvent(eval_completed=job_pb.EvalMetrics(step=5, loss=3.0))])
    # The job went back to the checkpoint at step 3 and repeated 4 and 5 with other values.
    store.append_events("j1", [_progress(4, 0.4), _progress(5, 0.5), _progress(6, 0.6)])
    last, progress, evals = store.metric_points("j1")
    assert last == store.get("j1").last_sequence
    assert [r[1] for r in progress] == [1, 2, 3, 4, 5, 6]
    assert [r[2] for r in progress][3:] == [0.4, 0.5, 0.6]
    assert [r[1] for r in evals] == [5]
    store.close()


def test_an_older_store_gets_its_points_once_on_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = Store(path)
    _job(store)
    store.append_events("j1", [_progress(s, float(s)) for s in range(1, 4)])
    store.close()
    # Make it look like a store from before metric_points (and before versioned
    # migrations): no points, no marker, none of the later steps, no schema_version.
    db = sqlite3.connect(path)
    db.execute("DELETE FROM metric_points")
    db.execute("DELETE FROM meta WHERE key='metric_points'")
    db.execute("DROP INDEX jobs_creator")
    db.execute("ALTER TABLE jobs DROP COLUMN creator")
    db.execute("DROP TABLE outbox")
    db.execute("DROP TABLE schema_version")
    db.commit()
    db.close()
    reopened = Store(path)
    _, progress, _ = reopened.metric_points("j1")
    assert [r[1] for r in progress] == [1, 2, 3]
    assert not any(math.isnan(r[2]) for r in progress)
    reopened.close()


def test_delete_removes_the_points(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    _job(store)
    store.append_events("j1", [_progress(1, 1.0)])
    store.transition("j1", job_pb.TRAINING_JOB_STATE_CANCELLED, "test")
    store.delete("j1")
    rows = store._db.execute("SELECT COUNT(*) FROM metric_points WHERE job_id='j1'").fetchone()[0]
    assert rows == 0
    store.close()
