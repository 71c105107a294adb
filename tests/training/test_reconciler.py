"""The reconciler's rules, one pass at a time, on a real Valkey with a fake clock.

No workers run here, so nothing but the reconciler changes a job. Regressions for
issue 7: jobs stayed QUEUED after their entry was lost, and a RUNNING job that nobody
held stayed RUNNING forever.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.shared.bus import BusConfig, EventBus
from services.shared.valkey import EmbeddedValkey
from services.training.config import TrainingConfig
from services.training.jobs import JobManager
from services.training.queue import JobQueue, Keys
from services.training.reconciler import Reconciler
from services.training.store import CANCELLED, FAILED, PAUSED, QUEUED, RUNNING, Store

from .conftest import tiny_spec

NORMAL = job_pb.PRIORITY_NORMAL


@dataclass
class Rig:
    jobs: JobManager
    reconciler: Reconciler
    now: list[float]
    config: TrainingConfig

    @property
    def store(self) -> Store:
        return self.jobs.store

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds

    def queued(self) -> str:
        job_id = uuid.uuid4().hex[:12]
        self.store.create(job_pb.TrainingJob(spec=tiny_spec()), job_id, "")
        return job_id

    def running(self, worker: str = "worker-0-1", **flags: bool) -> str:
        job_id = self.queued()

        def hold(r):  # type: ignore[no-untyped-def]
            r.job.worker = worker
            for key, value in flags.items():
                setattr(r, key, value)

        self.store.transition(job_id, RUNNING, "started", worker=worker, mutate=hold)
        return job_id


@pytest.fixture
async def rig(valkey: EmbeddedValkey, tmp_path: Path) -> AsyncIterator[Rig]:
    config = TrainingConfig(data_dir=tmp_path, redis_url=valkey.url, workers=0, heartbeat_interval_s=0.5,
                            heartbeat_timeout_s=10.0, max_attempts=2, reconcile_interval_s=2.0,
                            key_prefix=f"r{uuid.uuid4().hex[:8]}:")
    bus = EventBus(BusConfig(url=valkey.url))
    keys = Keys(config.key_prefix)
    queue = JobQueue(bus, keys, claim_idle_ms=10_000)
    store = Store(config.database_path)
    jobs = JobManager(config, store, bus, queue, keys)
    now = [1000.0]
    try:
        yield Rig(jobs, Reconciler(jobs, clock=lambda: now[0]), now, config)
    finally:
        close = getattr(jobs.fanout, "aclose", None)
        if close is not None:
            await close()
        await bus.aclose()
        store.close()


async def test_queued_job_without_an_entry_is_enqueued_on_the_second_pass(rig: Rig) -> None:
    job_id = rig.queued()
    assert not await rig.reconciler.pass_once()  # first sighting: maybe a create in flight
    rig.advance(rig.config.reconcile_interval_s)
    report = await rig.reconciler.pass_once()
    assert report.requeued == [job_id]
    rec = rig.store.get(job_id)
    assert rec.state == QUEUED and rec.queue_entry
    assert await rig.jobs.queue.entry_state(NORMAL, rec.queue_entry) == "waiting"
    rig.advance(rig.config.reconcile_interval_s)
    assert not await rig.reconciler.pass_once()  # in step now: left alone


async def test_queued_job_whose_entry_was_deleted_is_enqueued_again(rig: Rig) -> None:
    job_id = rig.queued()
    await rig.jobs.enqueue(rig.store.get(job_id))
    old = rig.store.get(job_id).queue_entry
    await rig.jobs.bus.client.xdel(rig.jobs.queue.queue_stream(NORMAL), old)
    await rig.reconciler.pass_once()
    rig.advance(rig.config.reconcile_interval_s)
    assert (await rig.reconciler.pass_once()).requeued == [job_id]
    assert rig.store.get(job_id).queue_entry not in ("", old)


async def test_running_job_nobody_heartbeats_is_requeued_after_the_heartbeat_timeout(rig: Rig) -> None:
    job_id = rig.running()
    await rig.reconciler.pass_once()
    rig.advance(rig.config.heartbeat_timeout_s - 1)
    assert not await rig.reconciler.pass_once()  # a worker may just be re-setting its heartbeat
    rig.advance(1)
    assert (await rig.reconciler.pass_once()).reclaimed == [job_id]
    rec = rig.store.get(job_id)
    assert rec.state == QUEUED and rec.failures == 1 and not rec.job.worker
    assert await rig.jobs.queue.entry_state(NORMAL, rec.queue_entry) == "waiting"
    events = rig.store.events_after(job_id, 0)
    assert "worker worker-0-1 was lost; requeued" in events[-1].state_changed.reason


async def test_running_job_whose_worker_heartbeats_is_left_alone(rig: Rig) -> None:
    job_id = rig.running("worker-0-7")
    await rig.jobs.bus.client.set(rig.jobs.keys.job_heartbeat(job_id), "worker-0-7", px=60_000)
    for _ in range(3):
        assert not await rig.reconciler.pass_once()
        rig.advance(rig.config.heartbeat_timeout_s)
    assert rig.store.get(job_id).state == RUNNING


@pytest.mark.parametrize(("flags", "end"), [({"cancel_requested": True}, CANCELLED),
                                            ({"pause_requested": True}, PAUSED),
                                            ({"failures": 1}, FAILED)])
async def test_a_reclaimed_job_honours_cancel_pause_and_the_attempt_limit(rig: Rig, flags: dict, end: int) -> None:
    job_id = rig.running(**flags)
    await rig.reconciler.pass_once()
    rig.advance(rig.config.heartbeat_timeout_s)
    assert (await rig.reconciler.pass_once()).reclaimed == [job_id]
    assert rig.store.get(job_id).state == end


async def test_cancel_of_a_running_job_nobody_holds_is_immediate(rig: Rig) -> None:
    job_id = rig.running()
    job = await rig.jobs.cancel(f"trainingJobs/{job_id}")
    assert job.state == CANCELLED


async def test_cancel_of_a_running_job_a_worker_heartbeats_is_a_request(rig: Rig) -> None:
    job_id = rig.running("worker-0-7")
    await rig.jobs.bus.client.set(rig.jobs.keys.job_heartbeat(job_id), "worker-0-7", px=60_000)
    job = await rig.jobs.cancel(f"trainingJobs/{job_id}")
    assert job.state == RUNNING and rig.store.get(job_id).cancel_requested
