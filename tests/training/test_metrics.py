"""The training service's domain metrics (docs/metrics.md), on a real Valkey and real workers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_pb2 as job_pb
from prometheus_client import CollectorRegistry

from services.shared.bus import BusConfig, EventBus
from services.shared.valkey import EmbeddedValkey
from services.training.metrics import QueueCollector
from services.training.queue import JobQueue, Keys
from tests.training.conftest import TERMINAL, Training, tiny_spec

pytestmark = pytest.mark.asyncio(loop_scope="module")

HIGH, NORMAL, LOW = job_pb.PRIORITY_HIGH, job_pb.PRIORITY_NORMAL, job_pb.PRIORITY_LOW


def samples(collector: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(name, sorted labels): value}`` of one collect()."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in collector.collect() for s in family.samples}  # type: ignore[attr-defined]


@pytest_asyncio.fixture(loop_scope="module")
async def queue(valkey: EmbeddedValkey) -> AsyncIterator[JobQueue]:
    bus = EventBus(BusConfig(url=valkey.url))
    try:
        yield JobQueue(bus, Keys(f"m{uuid.uuid4().hex[:8]}:"), claim_idle_ms=60_000)
    finally:
        await bus.aclose()


async def test_queue_depth_and_oldest_entry_age_per_priority(valkey: EmbeddedValkey, queue: JobQueue) -> None:
    now = [time.time()]
    collector = QueueCollector(valkey.url, queue.keys, claim_idle_ms=queue.claim_idle_ms, clock=lambda: now[0])
    try:
        depth = "agentforge_training_queue_depth"
        age = "agentforge_training_queue_oldest_entry_age_seconds"
        empty = samples(collector)  # no streams, no groups yet: every priority is 0
        assert {k: v for k, v in empty.items() if k[0] == depth} == {
            (depth, (("priority", p),)): 0.0 for p in ("high", "normal", "low")}
        first = await queue.enqueue("trainingJobs/a", HIGH, 1)
        second = await queue.enqueue("trainingJobs/b", HIGH, 1)
        await queue.enqueue("trainingJobs/c", NORMAL, 1)
        await queue.ensure_groups()
        enqueued_ms = {c: int(c.entry_id.split("-")[0]) for c in (first, second)}
        now[0] = enqueued_ms[first] / 1000 + 30
        got = samples(collector)
        assert got[(depth, (("priority", "high"),))] == 2
        assert got[(depth, (("priority", "normal"),))] == 1
        assert got[(depth, (("priority", "low"),))] == 0
        assert got[(age, (("priority", "high"),))] == pytest.approx(30)  # the oldest entry: a's
        assert got[(age, (("priority", "low"),))] == 0
        # A worker takes a (delivered, pending, touched): no longer waiting; b is the oldest.
        claim = await queue.claim("w1")
        assert claim is not None and claim.job_id == "a"
        got = samples(collector)
        assert got[(depth, (("priority", "high"),))] == 1
        assert got[(age, (("priority", "high"),))] == pytest.approx(now[0] - enqueued_ms[second] / 1000)
        # Released after a failed attempt: claimable again, so it waits again.
        assert await queue.release(claim, "w1")
        got = samples(collector)
        assert got[(depth, (("priority", "high"),))] == 2
        assert got[(age, (("priority", "high"),))] == pytest.approx(30)
    finally:
        collector.close()


async def test_queue_series_are_left_out_not_zero_while_redis_is_away() -> None:
    keys = Keys("away:")
    collector = QueueCollector("redis://127.0.0.1:1/0", keys, claim_idle_ms=1000, timeout_s=0.5)
    try:
        started = time.monotonic()
        assert samples(collector) == {}
        assert time.monotonic() - started < 5
    finally:
        collector.close()


async def test_running_job_series_exist_while_it_runs_and_vanish_after(training: Training) -> None:
    registry = CollectorRegistry()
    training.app.bind_metrics(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    job = await training.create(tiny_spec(max_steps=400, progress_interval=1, eval_interval=100,
                                          checkpoint_interval=100))
    await training.watch(job.name, until=lambda e: e.HasField("progress") and e.progress.step >= 5)
    deadline = time.monotonic() + 30
    while (value("agentforge_training_job_step", training_job=job.name) or 0) < 5:
        assert time.monotonic() < deadline, "the running job's step never showed"
        await asyncio.sleep(0.1)
    assert value("agentforge_training_jobs", state="running") >= 1
    assert value("agentforge_training_job_steps_per_second", training_job=job.name) > 0
    assert value("agentforge_training_job_examples_per_second", training_job=job.name) > 0
    assert value("agentforge_training_job_loss", training_job=job.name) > 0
    assert time.time() - 60 < value("agentforge_training_job_last_update_timestamp_seconds",
                                    training_job=job.name) <= time.time()
    busy, idle = value("agentforge_training_workers", state="busy"), value("agentforge_training_workers", state="idle")
    assert busy >= 1 and busy + idle == training.config.workers
    # The queue and the bus are exported too (the job's entry is pending, not waiting).
    assert value("agentforge_training_queue_depth", priority="normal") == 0
    assert value("agentforge_bus_entries_added_total", stream=training.app.keys.training_events) >= 1

    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    await training.watch(job.name)
    assert (await training.get(job.name)).state in TERMINAL
    assert value("agentforge_training_job_step", training_job=job.name) is None
    assert value("agentforge_training_job_loss", training_job=job.name) is None
    assert value("agentforge_training_jobs", state="cancelled") >= 1
