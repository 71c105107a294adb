"""kill -9 Valkey (no persistence) in the middle of training (issue 7, items 2 and 6).

Regressions for what the issue saw after Valkey was killed and started again: workers
logged NOGROUP forever and every job created afterwards stayed QUEUED (also after a
full restart); jobs queued before were stranded; a job watcher, and each of its
reconnects during the outage, got INTERNAL; a create hung 19 s, answered 500, and the
job existed anyway; health still said SERVING.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from agentforge.events.v1 import event_pb2
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_pb2 as job_pb
from grpc_health.v1 import health_pb2

from services.shared.bus import Cursor

from tests.training.conftest import tiny_spec

from .conftest import ChaosTraining, ResumingWatch

S = job_pb.TrainingJobState
SUCCEEDED = S.TRAINING_JOB_STATE_SUCCEEDED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def stored_sequences(harness: ChaosTraining, name: str) -> list[int]:
    return [e.sequence for e in harness.app.store.events_after(name.rpartition("/")[2], 0, limit=100_000)]


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def test_valkey_killed_mid_job_running_and_queued_jobs_finish_watchers_resume_new_jobs_run(
        training_on_private_valkey: Callable[..., Awaitable[ChaosTraining]]) -> None:
    t = await training_on_private_valkey(workers=1)
    long_spec = tiny_spec(max_steps=600, checkpoint_interval=100, eval_interval=300, progress_interval=5)
    running = await t.create(long_spec)
    queued = await t.create(tiny_spec())  # one worker: waits behind `running`
    watches = {running.name: ResumingWatch(), queued.name: ResumingWatch()}
    watchers = [asyncio.create_task(t.watch_resuming(name, w, timeout=360)) for name, w in watches.items()]

    async def progressed() -> bool:
        job = await t.get(running.name)
        return job.state == S.TRAINING_JOB_STATE_RUNNING and job.progress.step >= 20
    await _until(progressed, 240, "the first job runs")  # worker spawn + torch import under load
    job_stream = t.app.keys.job_events(running.name.rpartition("/")[2])
    epoch_before = await t.app.bus.epoch(job_stream)

    t.valkey.kill()  # SIGKILL: no shutdown save, and no persistence anyway

    # Health: the service says it cannot serve while Redis is away.
    async def not_serving() -> bool:
        return t.service.health.status("") == health_pb2.HealthCheckResponse.NOT_SERVING
    await _until(not_serving, 10, "training health NOT_SERVING during the outage")

    # A create during the outage answers within its deadline (here: the job is stored and
    # accepted), and a retry with the same request_id is the same job, not a second one.
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    during = await t.create(tiny_spec(), request_id=request_id, timeout=5)
    assert time.monotonic() - started < 5
    assert during.state == S.TRAINING_JOB_STATE_QUEUED
    again = await t.create(tiny_spec(), request_id=request_id, timeout=5)
    assert again.name == during.name

    # A watch opened during the outage is UNAVAILABLE or served from the store; never INTERNAL.
    probe = ResumingWatch()
    probe_task = asyncio.create_task(t.watch_resuming(during.name, probe, timeout=300))
    await asyncio.sleep(1.5)
    assert grpc.StatusCode.INTERNAL not in probe.errors and grpc.StatusCode.UNKNOWN not in probe.errors

    t.valkey.start()  # same port, empty: streams, groups, heartbeats, epochs all gone

    async def serving() -> bool:
        return t.service.health.status("") == health_pb2.HealthCheckResponse.SERVING
    await _until(serving, 10, "training health SERVING again")

    # A job created after the restart runs too (the workers' group was recreated).
    after = await t.create(tiny_spec())
    for job in (running, queued, during, after):
        done = await t.wait_terminal(job.name, timeout=150)
        assert done.state == SUCCEEDED, (job.name, S.Name(done.state))
    assert (await t.get(running.name)).progress.step == 600

    await asyncio.wait_for(asyncio.gather(*watchers, probe_task), 90)
    for name, watch in {**watches, during.name: probe}.items():
        assert all(code == grpc.StatusCode.UNAVAILABLE for code in watch.errors), (name, watch.errors)
        events = watch.deduplicated()
        # After dropping duplicates by sequence: the job's whole history, in order, once.
        assert [e.sequence for e in events] == stored_sequences(t, name), name
        assert events[-1].state_changed.to_state == SUCCEEDED
    # The bus history of the running job was lost with Valkey: a new epoch.
    assert await t.app.bus.epoch(job_stream) != epoch_before


async def test_jobs_queued_before_a_full_restart_on_an_empty_valkey_run(
        training_on_private_valkey: Callable[..., Awaitable[ChaosTraining]]) -> None:
    # No workers at first: the jobs are queued in Valkey and the database only.
    t = await training_on_private_valkey(workers=0)
    jobs = [await t.create(tiny_spec()) for _ in range(2)]
    t.valkey.kill()
    t.valkey.start()
    t.config = t.config.replace(workers=1)
    await t.restart_service()  # the whole service and its workers, on the same database
    for job in jobs:
        assert (await t.wait_terminal(job.name, timeout=90)).state == SUCCEEDED
    assert (await t.wait_terminal((await t.create(tiny_spec())).name, timeout=60)).state == SUCCEEDED



async def test_lifecycle_events_stored_while_valkey_is_away_are_published_once_it_is_back(
        training_on_private_valkey: Callable[..., Awaitable[ChaosTraining]]) -> None:
    # A job finishes and another is cancelled while Valkey is down: their state changes
    # and the registry's hand-off (TrainingJobCompleted) used to be lost for good. Now
    # they wait in the training store's outbox and reach events.training after the
    # restart, in order, each once (by envelope id).
    t = await training_on_private_valkey(workers=1)
    running = await t.create(tiny_spec(max_steps=300, checkpoint_interval=100, eval_interval=100,
                                       progress_interval=10))
    queued = await t.create(tiny_spec())  # one worker: waits behind `running`

    async def progressed() -> bool:
        job = await t.get(running.name)
        return job.state == S.TRAINING_JOB_STATE_RUNNING and job.progress.step >= 10
    await _until(progressed, 240, "the first job runs")  # worker spawn + torch import under load

    t.valkey.kill()
    await t.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=queued.name), timeout=10)
    done = await t.wait_terminal(running.name, timeout=120)  # finishes on the database alone
    assert done.state == SUCCEEDED
    waiting = []
    for _id, data in t.app.store.outbox_pending(1000):
        waiting.append(event_pb2.Event())
        waiting[-1].ParseFromString(data)
    kinds = {(e.subject, e.WhichOneof("payload")) for e in waiting}
    assert (running.name, "training_job_completed") in kinds and (queued.name, "training_job_event") in kinds

    t.valkey.start()  # same port, empty

    async def relayed() -> bool:
        return t.app.store.outbox_size() == 0
    await _until(relayed, 30, "the outbox relayed after the restart")
    stream = t.app.keys.training_events
    published = [item.unpack(event_pb2.Event) for item in
                 await t.app.bus.read(stream, Cursor(await t.app.bus.epoch(stream), "0-0"), count=10_000)]
    ids = [e.id for e in published]
    assert len(ids) == len(set(ids)), "an entry was published twice"
    assert ids[:len(waiting)] == [e.id for e in waiting]  # in the order they were stored
    completed = [e for e in published if e.WhichOneof("payload") == "training_job_completed"]
    assert [e.subject for e in completed] == [running.name]
    handoff = completed[0].training_job_completed
    assert handoff.training_job.state == SUCCEEDED and handoff.checkpoint.step == 300
    assert handoff.checkpoint.sha256
    changes = [(e.subject, e.training_job_event.state_changed.to_state) for e in published
               if e.WhichOneof("payload") == "training_job_event"]
    assert (queued.name, S.TRAINING_JOB_STATE_CANCELLED) in changes
    assert [to for name, to in changes if name == running.name][-1] == SUCCEEDED
