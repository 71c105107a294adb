"""The training queue's dead-letter path, end to end: the real service, real ``spawn``ed
worker processes killed for real, and real Valkey streams (``<queue>:dlq``).

- A job whose worker dies on every delivery is taken over (each takeover is one more
  delivery of its queue entry) until it has used ``max_attempts``; then it ends FAILED
  and its entry moves to the dead-letter stream, with the error and the delivery count.
- A poison entry (not a TrainingJobQueued naming a job) is dead-lettered by the worker
  that claims it, never retried, and the workers go on with the next job.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.shared.valkey import EmbeddedValkey

from .conftest import Training, tiny_spec, training_harness

S = job_pb.TrainingJobState
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def training(valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Training]:
    """Its own service and workers: these tests kill workers (the pool's restart budget
    is per service)."""
    async for harness in training_harness(valkey, tmp_path_factory, max_attempts=2):
        yield harness


async def _running_on(training: Training, name: str, *, other_than: str = "", timeout: float = 120) -> str:
    """The worker running ``name`` once it runs (on a worker other than ``other_than``)."""
    async with asyncio.timeout(timeout):
        while True:
            job = await training.get(name)
            if job.state == S.TRAINING_JOB_STATE_RUNNING and job.worker and job.worker != other_than:
                pid = training.app.pool.pid_of(job.worker)
                if pid is not None:
                    return job.worker
            assert job.state not in (S.TRAINING_JOB_STATE_FAILED, S.TRAINING_JOB_STATE_SUCCEEDED), job
            await asyncio.sleep(0.05)


async def _dead_letters(training: Training, subject: str, timeout: float = 20) -> list:
    async with asyncio.timeout(timeout):
        while True:
            letters = [letter for letter in await training.app.queue.dead_letters(job_pb.PRIORITY_NORMAL)
                       if letter.envelope.subject == subject]
            if letters:
                return letters
            await asyncio.sleep(0.05)


async def test_a_job_whose_worker_dies_on_every_delivery_is_failed_and_dead_lettered(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=1_000_000, checkpoint_interval=1_000, eval_interval=1_000))
    victim = await _running_on(training, job.name)
    os.kill(training.app.pool.pid_of(victim), signal.SIGKILL)  # type: ignore[arg-type]
    # Its heartbeat lapses; another worker takes the entry over (delivery 2, attempt 2).
    second = await _running_on(training, job.name, other_than=victim)
    os.kill(training.app.pool.pid_of(second), signal.SIGKILL)  # type: ignore[arg-type]
    # The next delivery finds the job out of attempts: FAILED, and the entry dead-lettered.
    async with asyncio.timeout(60):
        while (failed := await training.get(job.name)).state != S.TRAINING_JOB_STATE_FAILED:
            assert failed.state != S.TRAINING_JOB_STATE_SUCCEEDED
            await asyncio.sleep(0.05)
    assert "stopped heartbeating" in failed.error.message and "2 failed attempts" in failed.error.message
    (letter,) = await _dead_letters(training, job.name)
    assert letter.deliveries == training.config.max_attempts + 1  # two that died, one that gave up
    assert letter.source_stream == training.app.queue.queue_stream(job_pb.PRIORITY_NORMAL)
    assert "stopped heartbeating" in letter.error
    # Dead-lettered means acked: nothing is left pending for the workers.
    pending = await training.app.queue.bus.client.xpending(letter.source_stream, "workers")
    assert pending["pending"] == 0, pending


@pytest.mark.parametrize("fields", [
    {"type": "agentforge.events.v1.SomethingElse", "data": b"\x08\x01"},
    {"type": "agentforge.events.v1.TrainingJobQueued", "data": b"\xff\xff\xff"},
    {"type": "agentforge.events.v1.TrainingJobQueued", "data": b""},
], ids=["wrong-type", "undecodable", "no-job"])
async def test_a_poison_entry_is_dead_lettered_at_once_and_the_workers_go_on(
        training: Training, fields: dict) -> None:
    stream = training.app.queue.queue_stream(job_pb.PRIORITY_NORMAL)
    client = training.app.queue.bus.client
    subject = f"poison-{fields['type'].rsplit('.', 1)[1]}-{len(fields['data'])}"
    entry = await client.xadd(stream, {"id": "p" * 32, "subject": subject, "epoch": "e", "seq": 1, "time": 0,
                                       **fields})
    (letter,) = await _dead_letters(training, subject, timeout=60)
    assert letter.source_cursor.entry_id == (entry.decode() if isinstance(entry, bytes) else entry)
    assert letter.error.startswith("poison entry, not retried") and letter.deliveries == 1
    # The workers are still there and run the next job.
    job = await training.create(tiny_spec(max_steps=5))
    events = await training.watch(job.name, timeout=120)
    assert events[-1].state_changed.to_state == S.TRAINING_JOB_STATE_SUCCEEDED
