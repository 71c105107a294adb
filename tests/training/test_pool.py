"""The worker pool's supervision: backoff between restarts, and giving up on a crash loop."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from services.shared.supervision import RestartPolicy
from services.training.config import TrainingConfig
from services.training.pool import WorkerPool


def crashing_worker(config: TrainingConfig, index: int, log_format: str, log_level: str) -> None:
    """A worker that dies at once, with the time it started appended to a file."""
    with (config.data_dir / f"starts-{index}.txt").open("a") as out:
        out.write(f"{time.time()}\n")
    sys.exit(7)


@pytest.mark.slow
async def test_a_crashing_worker_is_restarted_with_growing_delays_then_the_pool_gives_up(tmp_path: Path) -> None:
    config = TrainingConfig(data_dir=tmp_path, workers=1)
    policy = RestartPolicy(burst=3, interval_s=60, delay_s=0.3, max_delay_s=1.0)
    pool = WorkerPool(config, restart=policy, target=crashing_worker)
    pool.start()
    try:
        await asyncio.wait_for(pool.failed.wait(), timeout=150)  # 4 spawn starts on a busy box
    finally:
        await pool.aclose()
    assert pool.failure is not None
    assert "worker 0 died (exit code 7) too often: 4 crashes within 60 s (limit: 3 restarts)" in pool.failure
    starts = [float(t) for t in (tmp_path / "starts-0.txt").read_text().split()]
    assert len(starts) == 4  # the first start and 3 restarts, then no more
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # Delays 0.3, 0.6, 1.0 (capped) before each restart, plus the start of a spawn process.
    for gap, delay in zip(gaps, (0.3, 0.6, 1.0)):
        assert gap >= delay, gaps
    assert gaps[2] > gaps[0], gaps


def test_the_pool_reads_its_policy_from_af_training_worker_restart(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AF_TRAINING_WORKER_RESTART_BURST", "9")
    pool = WorkerPool(TrainingConfig(workers=0))
    assert pool.restart.burst == 9


async def test_stopping_while_a_restart_waits_out_its_delay_is_clean(tmp_path: Path) -> None:
    # The service's SIGTERM reaches its workers too (one process group): a worker can die
    # just before the pool stops, leaving a restart pending. Stopping then must not trip.
    config = TrainingConfig(data_dir=tmp_path, workers=1)
    pool = WorkerPool(config, restart=RestartPolicy(delay_s=30, max_delay_s=30), target=crashing_worker)
    pool.start()
    deadline = time.monotonic() + 60
    while not pool._restart_at:  # noqa: SLF001 - the pending restart is the point
        assert time.monotonic() < deadline, "the worker never died"
        await asyncio.sleep(0.05)
    await pool.aclose(timeout_s=5)  # raised ValueError("process object is closed") before
    assert pool.processes == {} and pool.failure is None
