"""A cancelled run leaves no step PENDING or RUNNING (issue 8).

Drives :meth:`RunManager._compensate` directly on a real RunStore (no peers are needed:
the steps here have no resource to undo).
"""

from __future__ import annotations

from pathlib import Path

from agentforge.forge.v1 import phase_run_pb2 as pr
from services.forge.catalog import CATALOG
from services.forge.config import ForgeConfig
from services.forge.saga import RunManager
from services.forge.store import RunStore

S = pr.PhaseRunState


def _run(states: list[int]) -> pr.PhaseRun:
    steps = CATALOG["cognate"].steps()
    assert len(steps) >= len(states) >= 3
    run = pr.PhaseRun(name="phaseRuns/c1", phase="phases/cognate", state=S.PHASE_RUN_STATE_RUNNING)
    for step, state in zip(steps, states):
        run.steps.add(name=step.name, state=state)
    return run


async def _compensate(tmp_path: Path, final: int, states: list[int]) -> list[int]:
    store = RunStore(tmp_path / "forge.db")
    manager = RunManager(store, None, None, None, ForgeConfig(data_dir=tmp_path))  # type: ignore[arg-type]
    run = _run(states)
    store.insert(run)
    try:
        await manager._compensate(run, final, "test", None)
        stored = store.get("c1")
        assert stored is not None and stored.state == final
        return [s.state for s in stored.steps]
    finally:
        store.close()


async def test_cancel_marks_the_running_step_cancelled_and_later_steps_skipped(tmp_path: Path) -> None:
    states = await _compensate(tmp_path, S.PHASE_RUN_STATE_CANCELLED,
                               [pr.SAGA_STEP_STATE_SUCCEEDED, pr.SAGA_STEP_STATE_RUNNING, pr.SAGA_STEP_STATE_PENDING])
    assert states == [pr.SAGA_STEP_STATE_SUCCEEDED, pr.SAGA_STEP_STATE_CANCELLED, pr.SAGA_STEP_STATE_SKIPPED]


async def test_a_failed_run_leaves_no_step_running_either(tmp_path: Path) -> None:
    states = await _compensate(tmp_path, S.PHASE_RUN_STATE_FAILED,
                               [pr.SAGA_STEP_STATE_SUCCEEDED, pr.SAGA_STEP_STATE_RUNNING, pr.SAGA_STEP_STATE_PENDING])
    assert states == [pr.SAGA_STEP_STATE_SUCCEEDED, pr.SAGA_STEP_STATE_FAILED, pr.SAGA_STEP_STATE_SKIPPED]
