"""TrainingService end to end in one process group: gRPC server, Valkey, spawned workers."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import grpc
import grpc.aio
import pytest
import torch
from google.rpc import code_pb2
from agentforge.events.v1 import event_pb2
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from agentforge.training.v1 import training_service_pb2_grpc

from services.shared.bus import Cursor
from services.shared.config import ServerConfig
from services.training import mapping
from services.training.engine import Trainer
from services.training.engine.spec import SpecError
from services.training.engine.tasks import CognateTask
from services.training.server import create_server

from .conftest import TERMINAL, Training, tiny_spec
from tests.support import error_details
from tests.support import field_violations as violations

pytestmark = pytest.mark.asyncio(loop_scope="module")

S = job_pb.TrainingJobState


def kinds(events: list[ev_pb.TrainingJobEvent]) -> list[str]:
    return [e.WhichOneof("kind") or "" for e in events]


def progress_steps(events: list[ev_pb.TrainingJobEvent]) -> list[int]:
    return [e.progress.step for e in events if e.HasField("progress")]


def states(events: list[ev_pb.TrainingJobEvent]) -> list[int]:
    return [e.state_changed.to_state for e in events if e.HasField("state_changed")]


def step_reached(step: int):  # type: ignore[no-untyped-def]
    return lambda e: e.HasField("progress") and e.progress.step >= step


async def test_create_then_watch_streams_sequenced_progress_to_succeeded(training: Training) -> None:
    job = await training.create(display_name="first", labels={"suite": "watch"})
    assert job.state == S.TRAINING_JOB_STATE_QUEUED and job.name.startswith("trainingJobs/")
    events = await training.watch(job.name)
    assert training.stream_ends[-1].code == 0  # ended OK right after the terminal event
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.training_job == job.name and e.cursor and e.epoch for e in events)
    assert states(events) == [S.TRAINING_JOB_STATE_QUEUED, S.TRAINING_JOB_STATE_RUNNING,
                              S.TRAINING_JOB_STATE_SUCCEEDED]
    assert progress_steps(events) == list(range(1, 41))
    assert events[-1].state_changed.to_state == S.TRAINING_JOB_STATE_SUCCEEDED
    evals = [e.eval_completed.step for e in events if e.HasField("eval_completed")]
    assert evals == [10, 20, 30, 40]
    last = [e.progress for e in events if e.HasField("progress")][-1]
    assert last.grokfast.alpha == pytest.approx(0.98) and last.grokfast.slow_gradient_norm > 0

    done = await training.get(job.name)
    assert done.state == S.TRAINING_JOB_STATE_SUCCEEDED and done.attempts == 1 and not done.worker
    assert done.final_metrics["train_loss"] == pytest.approx(last.train_loss)
    assert done.progress.step == 40 and done.latest_checkpoint == f"{job.name}/checkpoints/40"

    listed = await training.stub.ListCheckpoints(rr.ListCheckpointsRequest(parent=job.name))
    assert [c.step for c in listed.checkpoints] == [40, 30, 20, 10]
    final = listed.checkpoints[0]
    assert final.final and final.trigger == job_pb.CHECKPOINT_TRIGGER_FINAL and len(final.sha256) == 64
    assert Path(final.uri.removeprefix("file://")).stat().st_size == final.size_bytes

    # The registry's hand-off: TrainingJobCompleted on events.training (relayed from the
    # store's outbox, a poll interval after the worker stored it).
    bus = training.app.bus
    found = None
    deadline = asyncio.get_running_loop().time() + 10
    while found is None and asyncio.get_running_loop().time() < deadline:
        for item in await bus.read(training.app.keys.training_events,
                                   Cursor(await bus.epoch(training.app.keys.training_events), "0-0"), count=1000):
            # Cross-service streams carry agentforge.events.v1.Event envelopes only.
            envelope = item.unpack(event_pb2.Event)
            if envelope.WhichOneof("payload") == "training_job_completed" and envelope.subject == job.name:
                assert envelope.type == event_pb2.TrainingJobCompleted.DESCRIPTOR.full_name
                assert envelope.source == "training"
                found = envelope.training_job_completed
        await asyncio.sleep(0.1)
    assert found is not None and found.checkpoint.step == 40 and found.training_job.final_metrics["train_loss"] > 0


async def test_watch_resumed_from_a_cursor_gets_exactly_the_rest(training: Training) -> None:
    job = await training.create()
    head = await training.watch(job.name, until=step_reached(5))
    rest = await training.watch(job.name, head[-1].cursor)
    full = await training.watch(job.name)
    assert head + rest == full  # compared as messages: protobuf maps have no canonical byte order
    middle = full[20]
    assert [e.sequence for e in await training.watch(job.name, middle.cursor)] == [e.sequence for e in full[21:]]
    # A cursor at the terminal event: nothing left, the stream ends OK at once.
    assert await training.watch(job.name, full[-1].cursor, timeout=5) == []


async def test_metric_history_then_watch_from_its_cursor_has_no_gap_and_no_duplicate(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=300, eval_interval=50, checkpoint_interval=0))
    metrics_name = f"{job.name}/metrics"
    empty = await training.stub.GetTrainingJobMetrics(rr.GetTrainingJobMetricsRequest(name=metrics_name))
    assert empty.name == metrics_name and empty.sequence >= 1  # QUEUED is an event, with no points
    assert not empty.progress and not empty.evals and empty.progress_count == 0

    await training.watch(job.name, until=step_reached(12))
    history = await training.stub.GetTrainingJobMetrics(
        rr.GetTrainingJobMetricsRequest(name=metrics_name, max_points=10000))
    steps = [p.step for p in history.progress]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] >= 12
    assert history.progress_count == len(steps) and history.cursor
    rest = await training.watch(job.name, history.cursor)
    assert not rest or rest[0].sequence == history.sequence + 1  # exactly the events after the history
    assert steps + progress_steps(rest) == list(range(1, 301))
    evals = [e.step for e in history.evals] + [e.eval_completed.step for e in rest if e.HasField("eval_completed")]
    assert evals == [50, 100, 150, 200, 250, 300]

    done = await training.stub.GetTrainingJobMetrics(rr.GetTrainingJobMetricsRequest(name=metrics_name, max_points=10))
    assert done.progress_count == 300 and done.eval_count == 6 and len(done.progress) == 10 and len(done.evals) == 6
    kept = [p.step for p in done.progress]
    assert kept[0] == 1 and kept[-1] == 300 and kept == sorted(set(kept))
    final = await training.get(job.name)
    assert done.sequence == final_sequence(rest, history) and done.cursor
    full = {p.step: p for p in history.progress} | {e.progress.step: e.progress for e in rest if e.HasField("progress")}
    assert all(p == full[p.step] for p in done.progress)  # the points are the events' own progress
    assert final.state == S.TRAINING_JOB_STATE_SUCCEEDED
    assert await training.watch(job.name, done.cursor, timeout=5) == []  # nothing after the last event


def final_sequence(rest: list[ev_pb.TrainingJobEvent], history: rr.GetTrainingJobMetricsRequest) -> int:
    return rest[-1].sequence if rest else history.sequence  # type: ignore[attr-defined]


async def test_retried_create_with_same_request_id_returns_the_same_job(training: Training) -> None:
    request_id = uuid.uuid4().hex
    first, second = await asyncio.gather(training.create(request_id=request_id),
                                         training.create(request_id=request_id))
    third = await training.create(request_id=request_id)
    assert first.name == second.name == third.name and third.request_id == request_id
    listed = await training.stub.ListTrainingJobs(rr.ListTrainingJobsRequest(page_size=1000))
    assert [j.name for j in listed.training_jobs].count(first.name) == 1
    await training.watch(first.name)


async def test_cancel_stops_the_running_job_within_one_step(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=100_000, checkpoint_interval=100_000))
    await training.watch(job.name, until=step_reached(3))
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    events = await training.watch(job.name)
    assert events[-1].state_changed.to_state == S.TRAINING_JOB_STATE_CANCELLED
    [applied] = [e for e in events if e.HasField("control_applied")]
    stop_step = applied.control_applied.step
    after = progress_steps(events[events.index(applied):])
    assert after == [] and max(progress_steps(events)) == stop_step < 100_000
    assert (await training.get(job.name)).state == S.TRAINING_JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_pause_then_resume_continues_from_the_pause_checkpoint(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=600, checkpoint_interval=1000, eval_interval=100))
    await training.watch(job.name, until=step_reached(3))
    await training.stub.PauseTrainingJob(rr.PauseTrainingJobRequest(name=job.name))
    watched = await training.watch(job.name, until=lambda e: e.state_changed.to_state == S.TRAINING_JOB_STATE_PAUSED)
    paused = await training.get(job.name)
    assert paused.state == S.TRAINING_JOB_STATE_PAUSED and not paused.worker
    [ckpt] = [e.checkpoint_written for e in watched if e.HasField("checkpoint_written")]
    assert ckpt.trigger == job_pb.CHECKPOINT_TRIGGER_PAUSE and ckpt.step == paused.progress.step < 600

    # A PAUSED job's watch stays open: it sees the resume and the rest of the run.
    watcher = asyncio.create_task(training.watch(job.name, watched[-1].cursor))
    await asyncio.sleep(0.3)
    assert not watcher.done()
    await training.stub.ResumeTrainingJob(rr.ResumeTrainingJobRequest(name=job.name))
    rest = await watcher
    assert states(rest) == [S.TRAINING_JOB_STATE_QUEUED, S.TRAINING_JOB_STATE_RUNNING, S.TRAINING_JOB_STATE_SUCCEEDED]
    assert progress_steps(rest) == list(range(ckpt.step + 1, 601))
    assert any(e.HasField("log") and f"step {ckpt.step}" in e.log.message for e in rest)
    assert (await training.get(job.name)).attempts == 2


async def test_paused_job_progress_shows_the_pause_checkpoint_step(training: Training) -> None:
    """Issue 8: with progress every 50 steps, a job paused between two progress events
    showed the older step; its progress is the pause checkpoint's step."""
    job = await training.create(tiny_spec(max_steps=100_000, progress_interval=50, checkpoint_interval=100_000,
                                          eval_interval=100_000))
    await training.watch(job.name, until=step_reached(50), timeout=180)
    await training.stub.PauseTrainingJob(rr.PauseTrainingJobRequest(name=job.name))
    watched = await training.watch(job.name, until=lambda e: e.state_changed.to_state == S.TRAINING_JOB_STATE_PAUSED)
    [ckpt] = [e.checkpoint_written for e in watched if e.HasField("checkpoint_written")]
    paused = await training.get(job.name)
    assert ckpt.trigger == job_pb.CHECKPOINT_TRIGGER_PAUSE
    assert paused.progress.step == ckpt.step, (paused.progress.step, ckpt.step)
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))


async def test_adjust_and_checkpoint_now_apply_live_and_are_recorded(training: Training) -> None:
    job = await training.create(tiny_spec(max_steps=100_000, checkpoint_interval=100_000, eval_interval=100_000))
    await training.watch(job.name, until=step_reached(5))
    await training.stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name=job.name, learning_rate=0.005))
    await training.stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name=job.name, grokfast_alpha=0.9,
                                                                      grokfast_lamb=1.5))
    await training.stub.CheckpointTrainingJob(rr.CheckpointTrainingJobRequest(name=job.name))
    seen: dict[str, ev_pb.TrainingJobEvent] = {}

    def applied(e: ev_pb.TrainingJobEvent) -> bool:
        c = e.control_applied
        if e.HasField("control_applied"):
            if c.HasField("learning_rate"):
                seen["lr"] = e
            if c.HasField("grokfast_alpha"):
                seen["gf"] = e
            if c.checkpoint_requested:
                seen["ckpt"] = e
        if e.HasField("checkpoint_written") and e.checkpoint_written.trigger == job_pb.CHECKPOINT_TRIGGER_REQUESTED:
            seen["written"] = e
        return len(seen) == 4 and e.HasField("progress") and e.sequence > max(x.sequence for x in seen.values())

    events = await training.watch(job.name, until=applied)
    assert seen["lr"].control_applied.learning_rate == pytest.approx(0.005)
    assert seen["gf"].control_applied.grokfast_alpha == pytest.approx(0.9)
    assert seen["gf"].control_applied.grokfast_lamb == pytest.approx(1.5)
    last = events[-1].progress
    assert last.learning_rate == pytest.approx(0.005)
    assert (last.grokfast.alpha, last.grokfast.lamb) == (pytest.approx(0.9), pytest.approx(1.5))
    listed = await training.stub.ListCheckpoints(rr.ListCheckpointsRequest(parent=job.name))
    assert seen["written"].checkpoint_written.step in [c.step for c in listed.checkpoints]
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    assert states(await training.watch(job.name))[-1] == S.TRAINING_JOB_STATE_CANCELLED


async def test_killed_worker_job_resumes_elsewhere_with_the_same_result(training: Training) -> None:
    spec = tiny_spec(max_steps=400, checkpoint_interval=20, eval_interval=50, seed=7)
    reference = await training.create(spec)
    await training.watch(reference.name)
    expected = (await training.get(reference.name)).final_metrics

    job = await training.create(spec)
    await training.watch(job.name, until=lambda e: e.HasField("checkpoint_written") and e.checkpoint_written.step >= 40)
    victim = (await training.get(job.name)).worker
    pid = training.app.pool.pid_of(victim)
    assert pid is not None and pid in [p.pid for p in training.app.pool.processes.values()]
    os.kill(pid, signal.SIGKILL)
    events = await training.watch(job.name)
    done = await training.get(job.name)
    assert done.state == S.TRAINING_JOB_STATE_SUCCEEDED and done.attempts == 2
    takeovers = [e.state_changed for e in events if e.HasField("state_changed")
                 and "heartbeat lapsed" in e.state_changed.reason]
    assert len(takeovers) == 1 and takeovers[0].worker != victim
    assert done.final_metrics["train_loss"] == expected["train_loss"]
    assert done.final_metrics["eval_loss"] == expected["eval_loss"]


async def test_job_that_cannot_succeed_fails_at_once_without_retries(
        training: Training, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8: an error retrying cannot fix (here a malformed dataset, found by the
    engine) is never retried: FAILED after the first attempt, the queue entry acked,
    not dead-lettered (the message is fine; the job is not). Create reads a bounded
    prefix of the file (made 64 characters here): the bad line lies past it, so only
    the worker finds it."""
    monkeypatch.setattr(mapping, "DATASET_SCAN_MAX_CHARS", 64)
    data = training.config.dataset_root_paths[0] / "broken.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text('{"text": "fine and long enough for windows"}\n' * 8 + "this is not json\n")
    spec = tiny_spec(task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE,
                                          dataset=job_pb.DatasetSpec(path=str(data))),
                     model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=8))
    job = await training.create(spec)
    events = await training.watch(job.name, timeout=180)  # the first job waits for the workers to spawn
    assert states(events)[-1] == S.TRAINING_JOB_STATE_FAILED
    assert not [e for e in events if e.HasField("state_changed") and "retrying" in e.state_changed.reason]
    failed = await training.get(job.name)
    assert failed.state == S.TRAINING_JOB_STATE_FAILED and "invalid JSON" in failed.error.message
    assert failed.error.code == code_pb2.INVALID_ARGUMENT
    # (attempts may count a takeover after a missed heartbeat on a loaded machine; what
    # matters is that the engine's error was not retried: no "retrying" above.)
    letters = await training.app.queue.dead_letters(job_pb.PRIORITY_NORMAL)
    assert job.name not in [letter.envelope.subject for letter in letters]


async def test_dataset_paths_outside_the_data_roots_get_the_same_answer_as_missing_ones(
        training: Training, tmp_path: Path) -> None:
    """Issue 8: only files under the configured data roots; missing and forbidden paths
    are indistinguishable (INVALID_ARGUMENT, DATASET_NOT_ALLOWED, the same message)."""
    root = training.config.dataset_root_paths[0]
    root.mkdir(parents=True, exist_ok=True)
    inside = root / "ok.txt"
    inside.write_text("hello world " * 50)
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    link = root / "link.txt"
    link.symlink_to(outside)
    answers = []
    for path in (str(outside), str(root / "missing.txt"), str(link), f"{root}/../{outside.name}",
                 "/etc/passwd.txt", str(root / "dir.txt")):
        if path.endswith("dir.txt"):
            (root / "dir.txt").mkdir(exist_ok=True)
        spec = tiny_spec(task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE, dataset=job_pb.DatasetSpec(path=path)),
                         model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=8))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await training.create(spec)
        info, _ = error_details(err.value)
        answers.append((err.value.code(), err.value.details(), info.reason if info else None, violations(err.value)))
    assert len(set(map(repr, answers))) == 1, answers
    assert answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT and answers[0][2] == "DATASET_NOT_ALLOWED"
    assert answers[0][3] == ["training_job.spec.task.dataset.path"]
    # A file under the root is accepted.
    spec = tiny_spec(task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE, dataset=job_pb.DatasetSpec(path=str(inside))),
                     model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=8), max_steps=5)
    job = await training.create(spec)
    assert job.spec.task.dataset.path == str(inside)
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))


async def test_cuda_job_on_a_machine_without_cuda_is_rejected_at_create(training: Training) -> None:
    """Issue 8: DEVICE_CUDA where there is no CUDA can never run: FAILED_PRECONDITION at
    create (reason DEVICE_UNAVAILABLE), instead of three failed attempts."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.create(tiny_spec(device=job_pb.DEVICE_CUDA))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = error_details(err.value)
    assert info is not None and info.reason == "DEVICE_UNAVAILABLE"
    listed = await training.stub.ListTrainingJobs(rr.ListTrainingJobsRequest())
    assert not [j for j in listed.training_jobs if j.spec.device == job_pb.DEVICE_CUDA]


@pytest.mark.parametrize(("change", "field"), [
    ({"model": job_pb.ModelArchitecture(layers=1, width=32, heads=0, context_length=4)}, "training_job.spec.model.heads"),
    ({"model": job_pb.ModelArchitecture(layers=1, width=30, heads=4, context_length=4)}, "training_job.spec.model"),
    ({"optimizer": job_pb.OptimizerSpec(learning_rate=-0.1)}, "training_job.spec.optimizer.learning_rate"),
    ({"task": job_pb.TaskSpec(kind=job_pb.TASK_KIND_UNSPECIFIED)}, "training_job.spec.task.kind"),
    ({"task": job_pb.TaskSpec(kind=42)}, "training_job.spec.task.kind"),  # type: ignore[arg-type]
    ({"task": job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE, dataset=job_pb.DatasetSpec(path="/nonexistent/x.txt"))},
     "training_job.spec.task.dataset.path"),
    ({"task": job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE)}, "training_job.spec.task.dataset"),
    ({"model": job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=4, vocab_size=10)},
     "training_job.spec.model.vocab_size"),
    ({"model": job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=3)},
     "training_job.spec.model.context_length"),
    ({"batch_size": 0}, "training_job.spec.batch_size"),
    ({"max_steps": 0}, "training_job.spec.max_steps"),
])
async def test_bad_spec_field_is_invalid_argument_naming_it(training: Training, change: dict, field: str) -> None:
    spec = tiny_spec()
    for key, value in change.items():
        if isinstance(value, int):
            setattr(spec, key, value)
        else:
            getattr(spec, key).CopyFrom(value)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.create(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(err.value)


async def test_bad_input_for_every_rpc_is_invalid_argument(training: Training) -> None:
    stub, bad = training.stub, "jobs/NOT-valid"
    calls = [
        (stub.GetTrainingJob(rr.GetTrainingJobRequest(name=bad)), "name"),
        (stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=bad)), "name"),
        (stub.PauseTrainingJob(rr.PauseTrainingJobRequest(name=bad)), "name"),
        (stub.ResumeTrainingJob(rr.ResumeTrainingJobRequest(name=bad)), "name"),
        (stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=bad)), "name"),
        (stub.CheckpointTrainingJob(rr.CheckpointTrainingJobRequest(name=bad)), "name"),
        (stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name="trainingJobs/x", learning_rate=-1)), "learning_rate"),
        (stub.ListCheckpoints(rr.ListCheckpointsRequest(parent=bad)), "parent"),
        (stub.GetTrainingJobMetrics(rr.GetTrainingJobMetricsRequest(name="trainingJobs/x")), "name"),
        (stub.GetTrainingJobMetrics(rr.GetTrainingJobMetricsRequest(name="trainingJobs/x/metrics",
                                                                    max_points=10001)), "max_points"),
        (stub.ListTrainingJobs(rr.ListTrainingJobsRequest(page_size=5000)), "page_size"),
        (stub.ListTrainingJobs(rr.ListTrainingJobsRequest(page_token="garbage!")), "page_token"),
        (stub.ListTrainingJobs(rr.ListTrainingJobsRequest(label_selector="BAD KEY")), "label_selector"),
        (stub.CreateTrainingJob(rr.CreateTrainingJobRequest()), "training_job"),
        (stub.CreateTrainingJob(rr.CreateTrainingJobRequest(training_job=job_pb.TrainingJob(spec=tiny_spec()),
                                                            request_id="no spaces allowed")), "request_id"),
    ]
    for call, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in violations(err.value), (field, violations(err.value))
    for request, field in [(rr.WatchTrainingJobRequest(name=bad), "name"),
                           (rr.WatchTrainingJobRequest(name="trainingJobs/x", cursor="%%%"), "cursor")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.WatchTrainingJob(request):
                pass
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    job = await training.create()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=job.name, cursor="bm90LWEtY3Vyc29y")):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err.value) == ["cursor"]
    await training.watch(job.name)


async def test_adjust_with_nothing_to_change_is_invalid_argument(training: Training) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name="trainingJobs/x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_job_is_not_found_for_every_rpc(training: Training) -> None:
    stub, name = training.stub, "trainingJobs/does-not-exist"
    calls = [
        stub.GetTrainingJob(rr.GetTrainingJobRequest(name=name)),
        stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=name)),
        stub.PauseTrainingJob(rr.PauseTrainingJobRequest(name=name)),
        stub.ResumeTrainingJob(rr.ResumeTrainingJobRequest(name=name)),
        stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=name)),
        stub.CheckpointTrainingJob(rr.CheckpointTrainingJobRequest(name=name)),
        stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name=name, learning_rate=0.1)),
        stub.ListCheckpoints(rr.ListCheckpointsRequest(parent=name)),
        stub.GetTrainingJobMetrics(rr.GetTrainingJobMetricsRequest(name=f"{name}/metrics")),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=name)):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_state_preconditions_list_filters_paging_and_delete(training: Training) -> None:
    suite = uuid.uuid4().hex[:8]
    jobs = [await training.create(labels={"suite": suite, "n": str(i)}, phase="phases/cognate") for i in range(3)]
    for job in jobs:
        await training.watch(job.name)
    stub = training.stub
    for call in (stub.ResumeTrainingJob(rr.ResumeTrainingJobRequest(name=jobs[0].name)),
                 stub.PauseTrainingJob(rr.PauseTrainingJobRequest(name=jobs[0].name)),
                 stub.CheckpointTrainingJob(rr.CheckpointTrainingJobRequest(name=jobs[0].name)),
                 stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name=jobs[0].name, learning_rate=0.1))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    request = rr.ListTrainingJobsRequest(page_size=2, label_selector=f"suite={suite}", phase="phases/cognate",
                                         states=[S.TRAINING_JOB_STATE_SUCCEEDED])
    first = await stub.ListTrainingJobs(request)
    assert [j.name for j in first.training_jobs] == [jobs[2].name, jobs[1].name] and first.next_page_token
    request.page_token = first.next_page_token
    second = await stub.ListTrainingJobs(request)
    assert [j.name for j in second.training_jobs] == [jobs[0].name] and not second.next_page_token
    one = await stub.ListTrainingJobs(rr.ListTrainingJobsRequest(label_selector=f"suite={suite},n=1"))
    assert [j.name for j in one.training_jobs] == [jobs[1].name]
    none = await stub.ListTrainingJobs(rr.ListTrainingJobsRequest(label_selector=f"suite={suite}",
                                                                  states=[S.TRAINING_JOB_STATE_RUNNING]))
    assert list(none.training_jobs) == []

    await stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=jobs[0].name))
    assert not training.config.run_dir(jobs[0].name.rpartition("/")[2]).exists()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.get(jobs[0].name)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    running = await training.create(tiny_spec(max_steps=100_000, checkpoint_interval=100_000))
    await training.watch(running.name, until=step_reached(1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteTrainingJob(rr.DeleteTrainingJobRequest(name=running.name))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=running.name))
    assert states(await training.watch(running.name))[-1] in TERMINAL


# ---------------------------------------------------------------- one worker, many jobs
async def _fresh_engine_losses(spec: job_pb.TrainingJobSpec, run_dir: Path) -> dict[int, float]:
    """Per-step train loss of ``spec`` run by the engine alone (1 torch thread, like the workers)."""
    losses: dict[int, float] = {}

    def on_event(e: object) -> None:
        if getattr(e, "kind", "") == "progress":
            losses[e.step] = e.train_loss  # type: ignore[attr-defined]

    threads = torch.get_num_threads()
    try:
        await asyncio.to_thread(
            lambda: Trainer(mapping.spec_from_proto(spec), run_dir, on_event=on_event, num_threads=1).run())
    finally:
        torch.set_num_threads(threads)
    return losses


async def test_jobs_a_worker_ran_before_leave_no_trace_in_the_next_jobs_losses(
        training: Training, tmp_path: Path) -> None:
    """A live adjust, a cancel and a pause/resume on ONE worker, then the reference spec:
    its per-step losses are exactly a fresh engine run's (no RNG, control or run-dir state
    leaks from one job into the next)."""
    config = training.config.replace(data_dir=tmp_path / "one-worker", workers=1,
                                     key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    service, app = await create_server(config, ServerConfig(grace_seconds=0.5, metrics_port=-1, log_format="text",
                                                            log_level="WARNING"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    one = Training(service, app, channel, training_service_pb2_grpc.TrainingServiceStub(channel), config,
                  training.drains, training.stream_ends)
    long = {"max_steps": 100_000, "checkpoint_interval": 100_000, "eval_interval": 100_000}
    try:
        adjusted = await one.create(tiny_spec(**long, seed=3))
        await one.watch(adjusted.name, until=step_reached(3))
        await one.stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name=adjusted.name, learning_rate=0.01,
                                                                     grokfast_alpha=0.5, grokfast_lamb=5.0))
        await one.watch(adjusted.name, until=lambda e: e.HasField("control_applied"))
        await one.watch(adjusted.name, until=step_reached(
            (await one.get(adjusted.name)).progress.step + 3))
        await one.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=adjusted.name))
        assert states(await one.watch(adjusted.name))[-1] == S.TRAINING_JOB_STATE_CANCELLED

        paused = await one.create(tiny_spec(max_steps=60, checkpoint_interval=1000, seed=5))
        await one.watch(paused.name, until=step_reached(3))
        await one.stub.PauseTrainingJob(rr.PauseTrainingJobRequest(name=paused.name))
        await one.watch(paused.name, until=lambda e: e.state_changed.to_state == S.TRAINING_JOB_STATE_PAUSED)
        await one.stub.AdjustTrainingJob(rr.AdjustTrainingJobRequest(name=paused.name, learning_rate=0.02))
        await one.stub.ResumeTrainingJob(rr.ResumeTrainingJobRequest(name=paused.name))
        assert states(await one.watch(paused.name))[-1] == S.TRAINING_JOB_STATE_SUCCEEDED

        cancelled = await one.create(tiny_spec(**long, seed=9))
        await one.watch(cancelled.name, until=step_reached(1))
        await one.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=cancelled.name))
        assert states(await one.watch(cancelled.name))[-1] == S.TRAINING_JOB_STATE_CANCELLED

        spec = tiny_spec(max_steps=30, checkpoint_interval=10, eval_interval=10, seed=11)
        reference = await one.create(spec)
        events = await one.watch(reference.name)
        ran_on = {e.state_changed.worker for e in events if e.HasField("state_changed") and e.state_changed.worker}
        workers = set()
        for earlier in (adjusted, paused, cancelled):
            workers |= {e.state_changed.worker for e in await one.watch(earlier.name)
                        if e.HasField("state_changed") and e.state_changed.worker}
        assert len(ran_on) == 1 and ran_on == workers  # one long-lived worker ran all four
        served = {e.progress.step: e.progress.train_loss for e in events if e.HasField("progress")}
        assert sorted(served) == list(range(1, 31))
        assert served == await _fresh_engine_losses(spec, tmp_path / "fresh")
    finally:
        await channel.close()
        await service.shutdown(0.5)
        await app.aclose()


# ---------------------------------------------------------------- the worker's event pump
async def test_pump_stores_and_publishes_a_queued_burst_in_order_or_not_at_all_when_fenced(
        valkey, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from services.shared.bus import BusConfig, EventBus, Envelope
    from services.shared.errors import FailedPrecondition
    from services.training.config import TrainingConfig
    from services.training.engine import CheckpointEvent, LogEvent, ProgressEvent
    from services.training.queue import Claim, JobQueue
    from services.training.store import RUNNING, Store
    from services.training.worker import JobRun, Worker

    config = TrainingConfig(data_dir=tmp_path, redis_url=valkey.url, key_prefix=f"p{uuid.uuid4().hex[:8]}:")
    worker = Worker(config, 0)
    worker.store, worker.bus = Store(config.database_path), EventBus(BusConfig(url=valkey.url))
    worker.queue = JobQueue(worker.bus, worker.keys, claim_idle_ms=1000)
    try:
        store = worker.store
        rec, _, _ = store.create(job_pb.TrainingJob(spec=tiny_spec()), "burst", "")
        store.transition("burst", RUNNING, "test", worker=worker.name,
                         mutate=lambda r: setattr(r.job, "worker", worker.name))
        claim = Claim("q", None, event_pb2.TrainingJobQueued(training_job=rec.job.name), 1, False)  # type: ignore[arg-type]
        run = JobRun(worker, claim)
        ckpt_file = tmp_path / "step-3.pt"
        ckpt_file.write_bytes(b"weights")

        def progress(step: int) -> ProgressEvent:
            return ProgressEvent(step, 40, step / 40, 1.0 / step, 0.5, 1e-3, 100.0, 6400.0, 1.0, 0.01 * step)

        burst = [progress(1), progress(2), progress(3), CheckpointEvent(3, str(ckpt_file), "interval", 7),
                 LogEvent("info", "hello", 3), progress(4)]
        queue: asyncio.Queue[object] = asyncio.Queue()
        for item in [*burst, None]:  # all queued before the pump's first turn: one batch
            queue.put_nowait(item)
        await asyncio.wait_for(run._pump(queue, rec.job.name, 40), 10)

        stored = store.events_after("burst", 0)
        assert [e.sequence for e in stored] == list(range(1, 9))
        assert kinds(stored)[2:] == ["progress"] * 3 + ["checkpoint_written", "log", "progress"]
        published = [i for i in await worker.bus.read(worker.keys.job_events("burst")) if isinstance(i, Envelope)]
        # Watchers get the events the store holds (same sequences and cursors), in order.
        # Compared as messages: protobuf map fields (a checkpoint's metrics) have no canonical
        # byte order, so equal messages may serialize to different bytes.
        assert [type(stored[0]).FromString(p.data) for p in published] == stored[2:]
        assert [p.seq for p in published] == list(range(1, 7))
        job = store.get("burst").job
        assert job.progress.step == 4 and job.latest_checkpoint == f"{rec.job.name}/checkpoints/3"
        assert store.checkpoints("burst")[3].metrics["train_loss"] == pytest.approx(1 / 3)

        # Fenced: another worker owns the job now. Nothing of the batch is stored.
        store.update("burst", lambda r: setattr(r.job, "worker", "someone-else"))
        queue.put_nowait(progress(5))
        queue.put_nowait(CheckpointEvent(5, str(ckpt_file), "interval", 7))
        queue.put_nowait(None)
        await asyncio.wait_for(run._pump(queue, rec.job.name, 40), 10)
        assert run.lost and len(store.events_after("burst", 0)) == 8 and 5 not in store.checkpoints("burst")
        with pytest.raises(FailedPrecondition):
            store.append_events("burst", [ev_pb.TrainingJobEvent()], expect_worker=worker.name)
    finally:
        await worker.bus.aclose()
        worker.store.close()


async def test_200_watchers_of_one_job_all_get_every_event_from_one_fanout(training: Training) -> None:
    """Issue 7: 300 WatchTrainingJob streams used to end INTERNAL (each held its own
    Redis connection in a blocking read). Now the service's one fan-out feeds them all,
    and unary calls keep working while they are open."""
    job = await training.create(spec=tiny_spec(max_steps=60))
    watches = [asyncio.create_task(training.watch(job.name, timeout=120)) for _ in range(200)]
    for _ in range(5):  # unary calls never wait behind the streams
        await asyncio.wait_for(training.get(job.name), 5)
        await asyncio.sleep(0.2)
    results = await asyncio.gather(*watches)
    expected = [e.sequence for e in results[0]]
    assert expected == list(range(1, len(expected) + 1)) and len(expected) > 10
    assert results[0][-1].state_changed.to_state in TERMINAL
    for events in results:
        assert [e.sequence for e in events] == expected
    fanout = training.app.jobs.fanout
    assert fanout.reader_count == 2 and fanout.watcher_count == 0


async def test_a_tokenizer_char_job_trains_on_the_dataset_s_characters(training: Training) -> None:
    """Issue 8: TOKENIZER_CHAR answered "not supported yet". Now the job trains over the
    dataset's characters (plus BOS/EOS/PAD) and its checkpoints record that vocabulary."""
    data = training.config.dataset_root_paths[0] / "chars.txt"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("the cat sat on the mat\nthe dog ate the log\n" * 20)
    spec = tiny_spec(task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE, dataset=job_pb.DatasetSpec(
                         path=str(data), tokenizer=job_pb.TOKENIZER_CHAR)),
                     model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=8),
                     max_steps=20, eval_interval=10, checkpoint_interval=20)
    job = await training.create(spec)
    assert job.spec.task.dataset.tokenizer == job_pb.TOKENIZER_CHAR
    events = await training.watch(job.name, timeout=180)
    assert states(events)[-1] == S.TRAINING_JOB_STATE_SUCCEEDED, events[-3:]
    done = await training.get(job.name)
    final = (await training.stub.ListCheckpoints(rr.ListCheckpointsRequest(parent=job.name))).checkpoints[0]
    ckpt = torch.load(final.uri.removeprefix("file://"), weights_only=True)
    vocabulary = "".join(sorted(set(data.read_text()) - {"\n"}))
    assert ckpt["tokenizer"] == {"kind": "char", "vocabulary": vocabulary}
    assert ckpt["model"]["token_embeddings.weight"].shape[0] == len(vocabulary) + 3
    assert done.final_metrics["train_loss"] < 4.0  # ln(259) = 5.6 would be bytes; ln(16) = 2.8 here


def _char_spec(path: str, vocab_size: int = 0, **overrides: object) -> job_pb.TrainingJobSpec:
    dataset = (job_pb.DatasetSpec(builtin=job_pb.BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS,
                                  tokenizer=job_pb.TOKENIZER_CHAR) if path == "builtin"
               else job_pb.DatasetSpec(path=path, tokenizer=job_pb.TOKENIZER_CHAR))
    return tiny_spec(task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_COGNATE, dataset=dataset),
                     model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=8,
                                                    vocab_size=vocab_size), **overrides)


async def _rejected(training: Training, spec: job_pb.TrainingJobSpec) -> tuple[dict[str, str], set[str]]:
    """Create ``spec``: it must be INVALID_ARGUMENT and create nothing. Returns the
    violations (field -> description) and the job names before and after (equal)."""
    before = {j.name for j in (await training.stub.ListTrainingJobs(rr.ListTrainingJobsRequest(page_size=1000))).training_jobs}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await training.create(spec)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    _, bad = error_details(err.value)
    assert bad is not None, err.value.details()
    after = {j.name for j in (await training.stub.ListTrainingJobs(rr.ListTrainingJobsRequest(page_size=1000))).training_jobs}
    assert after == before
    return {v.field: v.description for v in bad.field_violations}, after


async def test_a_char_vocab_size_below_the_dataset_s_characters_is_invalid_argument_at_create(
        training: Training) -> None:
    """Defect: TOKENIZER_CHAR with vocabSize 3 was accepted at create and FAILED in the
    worker ("must be 0 or >= 59"). Now create answers INVALID_ARGUMENT on
    ``…model.vocab_size`` with the size needed, and creates nothing; the size needed is
    accepted; a file rewritten with more characters is read again (the cache keys on
    mtime and size)."""
    data = training.config.dataset_root_paths[0] / f"vocab-{uuid.uuid4().hex[:6]}.txt"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("the cat sat on the mat\nthe dog ate the log\n" * 20)
    needed = len(set(data.read_text()) - {"\n"}) + 3  # characters + BOS, EOS, PAD
    for vocab_size in (3, needed - 1):
        found, _ = await _rejected(training, _char_spec(str(data), vocab_size))
        assert list(found) == ["training_job.spec.model.vocab_size"], found
        assert f">= {needed}" in found["training_job.spec.model.vocab_size"], found
    # The built-in word problems: 56 characters, so 59.
    found, _ = await _rejected(training, _char_spec("builtin", 3))
    assert list(found) == ["training_job.spec.model.vocab_size"] and ">= 59" in found[
        "training_job.spec.model.vocab_size"], found
    job = await training.create(_char_spec(str(data), needed, max_steps=5))
    assert job.spec.model.vocab_size == needed
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    job = await training.create(_char_spec("builtin", 59, max_steps=5))
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    # Two more characters in the same file: the same spec is now too small by two.
    data.write_text("the cat sat on the mat\nthe dog ate the log!?\n" * 20)
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 1_000_000_000))
    found, _ = await _rejected(training, _char_spec(str(data), needed))
    assert f">= {needed + 2}" in found["training_job.spec.model.vocab_size"], found


async def test_a_char_dataset_with_too_many_characters_is_invalid_argument_at_create(training: Training) -> None:
    """Defect: a char dataset with more than 1,024 distinct characters was accepted and
    then failed in the worker. Now: INVALID_ARGUMENT on ``…task.dataset.tokenizer`` at
    create; the same file with TOKENIZER_BYTE is fine. A malformed .jsonl or an empty
    file is INVALID_ARGUMENT on ``…task.dataset.path``."""
    root = training.config.dataset_root_paths[0]
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"cjk-{uuid.uuid4().hex[:6]}.txt"
    data.write_text("".join(chr(0x4E00 + i) + ("\n" if i % 40 == 39 else "") for i in range(1100)) * 2)
    found, _ = await _rejected(training, _char_spec(str(data)))
    assert list(found) == ["training_job.spec.task.dataset.tokenizer"], found
    assert "at most 1024" in found["training_job.spec.task.dataset.tokenizer"], found
    as_bytes = _char_spec(str(data), max_steps=5)
    as_bytes.task.dataset.tokenizer = job_pb.TOKENIZER_BYTE
    job = await training.create(as_bytes)
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))

    malformed = root / f"bad-{uuid.uuid4().hex[:6]}.jsonl"
    malformed.write_text('{"text": "fine"}\n{"text": \n')
    empty = root / f"empty-{uuid.uuid4().hex[:6]}.txt"
    empty.write_text("\n\n")
    for path, words in ((malformed, "invalid JSON"), (empty, "no text")):
        found, _ = await _rejected(training, _char_spec(str(path)))
        assert list(found) == ["training_job.spec.task.dataset.path"] and words in found[
            "training_job.spec.task.dataset.path"], found


def _text_spec(path: str, context_length: int, tokenizer: int = job_pb.TOKENIZER_BYTE,
               **overrides: object) -> job_pb.TrainingJobSpec:
    spec = _char_spec(path, **overrides)
    spec.task.dataset.tokenizer = tokenizer
    spec.model.context_length = context_length
    return spec


async def test_a_dataset_too_short_for_one_window_is_invalid_argument_at_create(training: Training) -> None:
    """Defect: a dataset too short for one window of context_length + 1 tokens in its
    training or validation split was accepted and FAILED in the worker ("validation
    split has 13 tokens; need at least context_length + 1 = 17"). Now create answers
    INVALID_ARGUMENT on ``…task.dataset.path`` naming the split, its tokens and the
    tokens needed, for either tokenizer, counted as the worker counts them: the
    largest context_length the worker accepts is accepted, one more is not."""
    root = training.config.dataset_root_paths[0]
    root.mkdir(parents=True, exist_ok=True)
    field = "training_job.spec.task.dataset.path"
    # Three documents: 2 train, 1 validates; "héllo wörld" is 11 characters, 13 bytes,
    # plus BOS and EOS: 13 char tokens, 15 byte tokens in the validation split.
    three = root / f"short-{uuid.uuid4().hex[:6]}.txt"
    three.write_text("héllo wörld\n" * 3)
    # One document: split by position, int(0.9 * 12) = 10 train, 2 validate.
    one = root / f"one-{uuid.uuid4().hex[:6]}.jsonl"
    one.write_text('{"text": "abcdefghij"}\n')
    for path, tokenizer, tokens in ((three, job_pb.TOKENIZER_BYTE, 15), (three, job_pb.TOKENIZER_CHAR, 13),
                                    (one, job_pb.TOKENIZER_BYTE, 2)):
        found, _ = await _rejected(training, _text_spec(str(path), tokens, tokenizer))
        assert list(found) == [field], found
        assert f"validation split has {tokens} " in found[field], found
        assert f"context_length + 1 = {tokens + 1}" in found[field], found
        # The worker's own task agrees on both sides of the line.
        name = "byte" if tokenizer == job_pb.TOKENIZER_BYTE else "char"
        with pytest.raises(SpecError, match=f"validation split has {tokens} tokens"):
            CognateTask(str(path), tokens, 0.9, 0, tokenizer=name)
        CognateTask(str(path), tokens - 1, 0.9, 0, tokenizer=name)
    job = await training.create(_text_spec(str(three), 14, max_steps=5))
    await training.stub.CancelTrainingJob(rr.CancelTrainingJobRequest(name=job.name))
    # The built-in word problems with a window longer than their validation split.
    found, _ = await _rejected(training, _text_spec("builtin", 32768, max_steps=5))
    assert any("split has" in d and "validation split has 29141 byte tokens" in d and "context_length + 1 = 32769" in d for d in found.values()), found


async def test_an_empty_malformed_or_non_utf8_byte_dataset_is_invalid_argument_at_create(
        training: Training) -> None:
    """Defect: with TOKENIZER_BYTE, an empty file, a malformed .jsonl or bytes that are
    not UTF-8 were accepted at create and FAILED in the worker. Now each is
    INVALID_ARGUMENT on ``…task.dataset.path`` at create, and nothing is created."""
    root = training.config.dataset_root_paths[0]
    root.mkdir(parents=True, exist_ok=True)
    field = "training_job.spec.task.dataset.path"
    cases = {".jsonl": ('{"text": "fine"}\n{"text": \n'.encode(), "invalid JSON"),
             ".txt": (b"\n  \n", "no text"),
             ".md.txt": ("fine\n".encode() + b"\xff\xfe not utf-8\n", "not UTF-8")}
    for suffix, (content, words) in cases.items():
        path = root / f"bad-{uuid.uuid4().hex[:6]}{suffix}"
        path.write_bytes(content)
        found, _ = await _rejected(training, _text_spec(str(path), 8))
        assert list(found) == [field] and words in found[field], found
    empty_jsonl = root / f"empty-{uuid.uuid4().hex[:6]}.jsonl"
    empty_jsonl.write_text("")
    found, _ = await _rejected(training, _text_spec(str(empty_jsonl), 8))
    assert list(found) == [field] and "no text" in found[field], found
