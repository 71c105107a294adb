"""No zombie jobs: the database is the truth, the queue may forget (issue 7, item 3).

Regressions for what the issue saw: a running job whose queue entry disappeared was
abandoned ("lost the job to another worker") and stayed RUNNING forever, cancel
answered OK and changed nothing, delete was refused; jobs stayed QUEUED when their
entry was gone. These run on the module's real service (spawned workers, Valkey);
tests/chaos/ restarts Valkey itself.
"""

from __future__ import annotations

import asyncio
import uuid

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.shared.valkey import EmbeddedValkey
from services.training.queue import GROUP
from services.training.store import RUNNING

from .conftest import Training, tiny_spec, training_harness

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def training(valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Training]:
    """The module's service with a heartbeat timeout that a loaded 2-core machine cannot
    trip by accident: these tests assert that no takeover happens."""
    async for harness in training_harness(valkey, tmp_path_factory, heartbeat_timeout_s=5.0,
                                          reconcile_interval_s=0.5, max_attempts=3):
        # Both workers up (spawn + torch import can take minutes on a loaded machine), so
        # no test's own timeouts pay for it.
        pattern = harness.app.keys.worker_heartbeat("*")
        async with asyncio.timeout(300):
            while len(await harness.app.bus.client.keys(pattern)) < 2:
                await asyncio.sleep(0.5)
        yield harness

S = job_pb.TrainingJobState


def states(events: list[ev_pb.TrainingJobEvent]) -> list[int]:
    return [e.state_changed.to_state for e in events if e.HasField("state_changed")]


def reasons(events: list[ev_pb.TrainingJobEvent]) -> list[str]:
    return [e.state_changed.reason for e in events if e.HasField("state_changed")]


def step_reached(step: int):  # type: ignore[no-untyped-def]
    return lambda e: e.HasField("progress") and e.progress.step >= step


def ghost_job(training: Training, worker: str = "worker-9-999999") -> str:
    """A job the database says is RUNNING on ``worker``, which does not exist, and that
    has no queue entry: what a Redis restart leaves behind when the worker died too."""
    store = training.app.store
    job_id = uuid.uuid4().hex[:16]
    store.create(job_pb.TrainingJob(spec=tiny_spec()), job_id, "")

    def hold(r):  # type: ignore[no-untyped-def]
        r.job.worker = worker
        r.job.attempts += 1

    store.transition(job_id, RUNNING, f"started on {worker}", worker=worker, mutate=hold)
    return f"trainingJobs/{job_id}"


async def _wait_state(training: Training, name: str, state: int, timeout: float = 30.0) -> job_pb.TrainingJob:
    async with asyncio.timeout(timeout):
        while True:
            job = await training.get(name)
            if job.state == state:
                return job
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["xdel", "xack"])
async def test_running_job_whose_queue_entry_is_deleted_still_finishes(training: Training, how: str) -> None:
    job = await training.create(tiny_spec(max_steps=200, checkpoint_interval=1000, eval_interval=100))
    await training.watch(job.name, until=step_reached(3), timeout=180)
    rec = training.app.store.get(job.name.rpartition("/")[2])
    stream = training.app.queue.queue_stream(rec.job.spec.priority)
    client = training.app.bus.client
    if how == "xdel":  # an operator deletes the entry
        assert await client.xdel(stream, rec.queue_entry) == 1
    else:  # the entry leaves the pending list (acked / trimmed away)
        assert await client.xack(stream, GROUP, rec.queue_entry) == 1
    events = await training.watch(job.name, timeout=150)
    done = await training.get(job.name)
    assert done.state == S.TRAINING_JOB_STATE_SUCCEEDED, reasons(events)
    assert done.progress.step == 200
    # Never put back on the queue: its worker went on running it. (A takeover is allowed:
    # on a loaded machine a worker may stall past the heartbeat timeout.)
    assert not any("requeued" in r for r in reasons(events)), reasons(events)


async def test_running_job_whose_queue_entry_is_deleted_can_be_cancelled(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=100_000, checkpoint_interval=100_000))
    await training.watch(job.name, until=step_reached(3), timeout=180)
    rec = training.app.store.get(job.name.rpartition("/")[2])
    assert await training.app.bus.client.xdel(training.app.queue.queue_stream(rec.job.spec.priority),
                                              rec.queue_entry) == 1
    await asyncio.sleep(1.0)  # a few heartbeats: the worker notices its entry is gone
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    events = await training.watch(job.name, timeout=30)
    assert states(events)[-1] == S.TRAINING_JOB_STATE_CANCELLED
    await training.stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=job.name))


async def test_cancel_of_a_running_job_nobody_holds_ends_it_cancelled_and_delete_works(training: Training) -> None:
    name = ghost_job(training)
    cancelled = await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=name))
    assert cancelled.state == S.TRAINING_JOB_STATE_CANCELLED
    assert (await training.get(name)).state == S.TRAINING_JOB_STATE_CANCELLED
    events = await training.watch(name, timeout=10)
    assert states(events)[-1] == S.TRAINING_JOB_STATE_CANCELLED
    await training.stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=name))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.get(name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_of_a_running_job_is_refused_until_it_is_terminal(training: Training) -> None:
    name = ghost_job(training)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=name))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=name))
    await training.stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=name))


async def test_reconciler_requeues_a_running_job_no_live_worker_holds_and_it_finishes(training: Training) -> None:
    name = ghost_job(training)
    # heartbeat timeout + a reconcile pass: requeued, then run for real.
    done = await _wait_state(training, name, S.TRAINING_JOB_STATE_SUCCEEDED, timeout=150)
    events = await training.watch(name, timeout=10)
    assert any("was lost; requeued" in r for r in reasons(events)), reasons(events)
    assert done.attempts >= 2 and done.progress.step == 40


async def test_reconciler_enqueues_a_queued_job_whose_entry_is_gone(training: Training) -> None:
    # Stored, never enqueued: what a create leaves when Redis was away (or forgot it).
    job_id = uuid.uuid4().hex[:16]
    training.app.store.create(job_pb.TrainingJob(spec=tiny_spec()), job_id, "")
    done = await _wait_state(training, f"trainingJobs/{job_id}", S.TRAINING_JOB_STATE_SUCCEEDED, timeout=150)
    assert done.attempts >= 1 and done.progress.step == 40


async def test_a_duplicate_queue_entry_of_a_running_job_is_dropped_not_taken_over(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=200, checkpoint_interval=1000, eval_interval=100))
    await training.watch(job.name, until=step_reached(3), timeout=180)
    rec = training.app.store.get(job.name.rpartition("/")[2])
    stray = await training.app.queue.enqueue(job.name, rec.job.spec.priority, 2)  # a stray second entry
    events = await training.watch(job.name, timeout=150)
    assert states(events)[-1] == S.TRAINING_JOB_STATE_SUCCEEDED, reasons(events)
    # No worker ran the job from the stray entry (a run records the entry it came from).
    assert training.app.store.get(rec.id).queue_entry == rec.queue_entry != stray.entry_id
    assert await training.app.queue.entry_state(rec.job.spec.priority, stray.entry_id) == "gone"  # acked


async def test_a_cancel_flag_reaches_the_worker_without_its_control_request(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=100_000, checkpoint_interval=100_000))
    await training.watch(job.name, until=step_reached(3), timeout=180)
    # The control request is lost (as when Redis restarts); only the database has it.
    training.app.store.request_cancel(job.name.rpartition("/")[2])
    events = await training.watch(job.name, timeout=20)
    assert states(events)[-1] == S.TRAINING_JOB_STATE_CANCELLED
