"""The built-in training alerts on real jobs: a worker stopped mid-run (stalled), a huge
learning rate (diverged), and a tiny modular-arithmetic job that groks (grokking onset,
train/val gap raised then resolved) — through the real training service, its spawned
worker, Valkey and the monitoring service's WatchAlerts.

One worker, one torch thread: CI has two cores. Thresholds are the config knobs
(``AF_MONITORING_TRAINING_*``) set small. Nothing depends on the machine's speed: the jobs
that must be running when judged run until the test cancels them, and the grokking job's
gap lasts hundreds of steps (over a second even at 2 ms a step) against a 0.3 s window.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc.aio
import pytest
import pytest_asyncio

from agentforge.monitoring.v1 import alert_pb2, monitoring_service_pb2_grpc
from agentforge.monitoring.v1 import request_response_pb2 as mrr
from agentforge.training.v1 import request_response_pb2 as trr
from agentforge.training.v1 import training_job_pb2 as job_pb
from services.monitoring.alerts import TRAINING_RULES
from services.monitoring.config import MonitoringConfig
from services.monitoring.server import MonitoringServer, create_server
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey
from tests.training.conftest import Training, tiny_spec, training_harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

STALLED, DIVERGED, GROKKING, GAP = TRAINING_RULES
RAISED, RESOLVED = alert_pb2.ALERT_CHANGE_KIND_RAISED, alert_pb2.ALERT_CHANGE_KIND_RESOLVED


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def training(valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Training]:
    # A stopped worker must stay the job's holder for the whole test: a long heartbeat timeout.
    async for harness in training_harness(valkey, tmp_path_factory, workers=1, heartbeat_timeout_s=60.0):
        yield harness


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def monitoring(valkey: EmbeddedValkey, training: Training,
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MonitoringServer]:
    prefix = training.config.key_prefix
    config = MonitoringConfig(
        redis_url=valkey.url, data_dir=tmp_path_factory.mktemp("monitoring"),
        events_stream=prefix + "events.health", alerts_stream=prefix + "events.alerts",
        training_events_stream=prefix + "events.training",
        probe_interval_s=0.5, alert_eval_interval_s=0.2, publish_timeout_s=0.3,
        training_stall_after_s=2.0, training_max_loss=100.0,
        training_grok_validation_accuracy=0.2, training_grok_memorized_accuracy=0.9,
        training_grok_plateau_evaluations=5, training_gap=0.5, training_gap_for_s=0.3,
    )
    server = await create_server(config, ServerConfig(host="127.0.0.1", port=0, grace_seconds=0.5))
    try:
        yield server
    finally:
        await server.stop(1.0)


@pytest_asyncio.fixture(loop_scope="module")
async def alerts(monitoring: MonitoringServer) -> AsyncIterator[Callable[..., Any]]:
    """``await wait(rule, job, kind, timeout)`` → the first matching AlertEvent on WatchAlerts."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{monitoring.port}")
    stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
    call = stub.WatchAlerts(mrr.WatchAlertsRequest())
    seen: list[alert_pb2.AlertEvent] = []

    async def wait(rule: str, job: str, kind: int, timeout: float = 30.0) -> alert_pb2.AlertEvent:
        async with asyncio.timeout(timeout):
            while True:
                for event in seen:
                    a = event.alert
                    if a.rule == rule and a.labels.get("training_job") == job and event.kind == kind:
                        return event
                seen.append(await call.read())

    wait.stub = stub  # type: ignore[attr-defined]
    try:
        yield wait
    finally:
        call.cancel()
        await channel.close()


async def until_step(training: Training, name: str, step: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while (await training.get(name)).progress.step < step:
            await asyncio.sleep(0.1)


async def finish(training: Training, name: str) -> None:
    """Cancel the job (if still running) and wait until it is terminal."""
    job = await training.get(name)
    if job.state not in (job_pb.TRAINING_JOB_STATE_SUCCEEDED, job_pb.TRAINING_JOB_STATE_FAILED,
                         job_pb.TRAINING_JOB_STATE_CANCELLED):
        await training.stub.CancelTrainingJob(trr.CancelTrainingJobRequest(name=name))
    async with asyncio.timeout(30):
        while (await training.get(name)).state not in (job_pb.TRAINING_JOB_STATE_SUCCEEDED,
                                                        job_pb.TRAINING_JOB_STATE_FAILED,
                                                        job_pb.TRAINING_JOB_STATE_CANCELLED):
            await asyncio.sleep(0.1)


async def worker_pid(training: Training, job: job_pb.TrainingJob) -> int:
    raw = await training.app.bus.client.get(training.app.keys.worker_heartbeat(job.worker))
    info = json.loads(raw)
    assert info["job"] == job.name.rpartition("/")[2]
    return int(info["pid"])


async def test_builtin_training_rules_carry_the_configured_thresholds(alerts: Any) -> None:
    stub = alerts.stub
    stalled = await stub.GetAlertRule(mrr.GetAlertRuleRequest(name=STALLED))
    assert stalled.enabled and stalled.training_job.stalled.no_step_for.ToNanoseconds() == 2 * 10**9
    grok = await stub.GetAlertRule(mrr.GetAlertRuleRequest(name=GROKKING))
    assert grok.training_job.grokking_onset.validation_accuracy == pytest.approx(0.2)
    assert grok.severity == alert_pb2.ALERT_SEVERITY_INFO


async def test_a_stopped_worker_stalls_its_job_and_resuming_resolves(training: Training, alerts: Any) -> None:
    job = await training.create(tiny_spec(max_steps=1_000_000, progress_interval=10, eval_interval=1000,
                                          checkpoint_interval=1_000_000))
    await until_step(training, job.name, 50)
    running = await training.get(job.name)
    assert running.state == job_pb.TRAINING_JOB_STATE_RUNNING
    pid = await worker_pid(training, running)
    os.kill(pid, signal.SIGSTOP)
    try:
        raised = await alerts(STALLED, job.name, RAISED)
        assert (await training.get(job.name)).state == job_pb.TRAINING_JOB_STATE_RUNNING  # still RUNNING
    finally:
        os.kill(pid, signal.SIGCONT)
    alert = raised.alert
    assert alert.summary.startswith(f"{job.name} stalled: no step for")
    assert alert.severity == alert_pb2.ALERT_SEVERITY_WARNING and alert.value >= 2.0
    resolved = await alerts(STALLED, job.name, RESOLVED)
    assert resolved.alert.name == alert.name and resolved.alert.state == alert_pb2.ALERT_STATE_RESOLVED
    listed = await alerts.stub.ListAlerts(mrr.ListAlertsRequest(rule=STALLED))
    assert alert.name in [a.name for a in listed.alerts]
    await finish(training, job.name)


async def test_a_huge_learning_rate_diverges(training: Training, alerts: Any) -> None:
    # Long enough to still run when the alert is judged, however fast the machine.
    spec = tiny_spec(max_steps=1_000_000, progress_interval=5, checkpoint_interval=1_000_000)
    spec.optimizer.learning_rate = 10.0  # the contract's maximum; Adam explodes the loss at once
    job = await training.create(spec)
    try:
        raised = await alerts(DIVERGED, job.name, RAISED)
    finally:
        await finish(training, job.name)
    alert = raised.alert
    assert alert.summary.startswith(f"{job.name} diverged:")
    assert not (alert.value <= 100.0)  # above max_loss, or NaN
    assert alert.labels["training_job"] == job.name
    # Its alert resolves when the job ends (it never comes back below max_loss).
    resolved = await alerts(DIVERGED, job.name, RESOLVED)
    assert resolved.alert.name == alert.name and "CANCELLED" in resolved.alert.description


def grokking_spec() -> job_pb.TrainingJobSpec:
    """x*y mod 23, 1x64 model, AdamW wd 2: memorizes by ~300 steps, generalizes ~600-900."""
    return tiny_spec(
        task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_MODULAR_ARITHMETIC, modulus=23, train_fraction=0.5),
        model=job_pb.ModelArchitecture(layers=1, width=64, heads=2, context_length=4),
        optimizer=job_pb.OptimizerSpec(kind=job_pb.OPTIMIZER_KIND_ADAMW, learning_rate=5e-3, weight_decay=2.0,
                                       warmup_steps=10),
        batch_size=128, max_steps=3000, eval_interval=25, progress_interval=25, checkpoint_interval=1000,
    )


async def test_a_grokking_job_raises_the_gap_then_the_onset(training: Training, alerts: Any) -> None:
    job = await training.create(grokking_spec())
    try:
        gap = await alerts(GAP, job.name, RAISED, timeout=90)
        onset = await alerts(GROKKING, job.name, RAISED, timeout=90)
        assert onset.alert.value >= 0.2 and onset.alert.summary.startswith(f"{job.name} grokking onset:")
        assert onset.alert.severity == alert_pb2.ALERT_SEVERITY_INFO
        assert gap.sequence < onset.sequence  # memorized first, generalized after
        # Generalizing closes the gap: its alert resolves while the job still runs.
        closed = await alerts(GAP, job.name, RESOLVED, timeout=90)
        assert closed.alert.name == gap.alert.name and "Resolved: train/val gap" in closed.alert.description
        assert (await training.get(job.name)).state == job_pb.TRAINING_JOB_STATE_RUNNING
    finally:
        await finish(training, job.name)
    # The onset stays open until the job ends.
    ended = await alerts(GROKKING, job.name, RESOLVED)
    assert ended.alert.name == onset.alert.name and "CANCELLED" in ended.alert.description
