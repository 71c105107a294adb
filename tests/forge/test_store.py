"""Durable phase runs: snapshot + gap-free event history, epoch per database."""

from __future__ import annotations

import pytest

from agentforge.forge.v1 import phase_run_event_pb2 as ev
from agentforge.forge.v1 import phase_run_pb2 as pr
from services.forge.saga import parse_cursor
from services.forge.store import RunStore
from services.shared.errors import InvalidArgument


def _run(i: str, req: str = "") -> pr.PhaseRun:
    run = pr.PhaseRun(name=f"phaseRuns/{i}", phase="phases/cognate", request_id=req)
    run.create_time.GetCurrentTime()
    return run


def test_events_get_consecutive_sequences_and_cursors(tmp_path):
    store = RunStore(tmp_path / "f.db")
    run = _run("a")
    assert store.insert(run)
    for _ in range(3):
        store.save(run, ev.PhaseRunEvent(log=ev.PhaseRunLog(message="x")))
    events = store.events_after("a", 0)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert events[1].cursor == f"{store.epoch}.2"
    assert [e.sequence for e in store.events_after("a", 2)] == [3]


def test_request_id_is_unique(tmp_path):
    store = RunStore(tmp_path / "f.db")
    assert store.insert(_run("a", "r1"))
    assert not store.insert(_run("b", "r1"))
    assert store.by_request_id("r1").name == "phaseRuns/a"


def test_a_new_database_has_a_new_epoch_and_old_cursors_replay_all(tmp_path):
    old = RunStore(tmp_path / "1.db").epoch
    new = RunStore(tmp_path / "2.db").epoch
    assert old != new
    assert parse_cursor(f"{old}.7", new) == 0
    assert parse_cursor(f"{new}.7", new) == 7
    with pytest.raises(InvalidArgument):
        parse_cursor("garbage", new)


def test_list_filters_and_pages_newest_first(tmp_path):
    store = RunStore(tmp_path / "f.db")
    runs = [_run(str(i)) for i in range(5)]
    for i, r in enumerate(runs):
        r.create_time.seconds += i
        r.labels["team"] = "a" if i % 2 else "b"
        store.insert(r)
    page = store.list(phase="phases/cognate", states=[], labels={}, after=None, limit=2)
    assert [r.name for r in page] == ["phaseRuns/4", "phaseRuns/3"]
    only_a = store.list(phase="", states=[], labels={"team": "a"}, after=None, limit=10)
    assert [r.name for r in only_a] == ["phaseRuns/3", "phaseRuns/1"]


def test_a_step_error_that_means_a_dependency_is_away_is_stored_as_unavailable() -> None:
    """A phase run's stored error says UNAVAILABLE for Redis being away, not INTERNAL."""
    import redis

    from google.rpc import code_pb2

    from services.forge.saga import _rpc_status
    from services.shared.errors import FailedPrecondition

    assert _rpc_status(redis.exceptions.ConnectionError("refused")).code == code_pb2.UNAVAILABLE
    assert _rpc_status(FailedPrecondition("no parents", reason="PREREQUISITE_MISSING")).code == \
        code_pb2.FAILED_PRECONDITION
    assert _rpc_status(ValueError("bug")).code == code_pb2.INTERNAL
