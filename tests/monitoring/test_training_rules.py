"""Training alert rules without a training service: the built-in rules and the config,
and a monitoring service (re)started over a retained history of job events."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from agentforge.monitoring.v1 import alert_pb2, alert_rule_pb2
from agentforge.monitoring.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from services.monitoring.alerts import TRAINING_RULES, AlertManager
from services.monitoring.config import MonitoringConfig
from services.monitoring.store import MonitoringStore
from services.monitoring.training_alerts import TrainingRules, TrainingTracker
from services.monitoring.watcher import HealthWatcher
from services.shared.bus import BusConfig, EventBus
from services.shared.events import publish_event
from services.shared.valkey import EmbeddedValkey

STALLED, DIVERGED, GROKKING, GAP = TRAINING_RULES


def test_builtin_training_rules_follow_the_config_unless_edited_or_deleted(tmp_path: Path) -> None:
    store = MonitoringStore(tmp_path)
    watcher = HealthWatcher(MonitoringConfig())
    AlertManager(store, watcher, config=MonitoringConfig(training_stall_after_s=60, training_gap=0.4))
    assert store.rule(STALLED).training_job.stalled.no_step_for.seconds == 60
    assert math.isclose(store.rule(GAP).training_job.train_val_gap.gap, 0.4)
    edited = store.rule(GAP)
    edited.training_job.train_val_gap.gap = 0.9
    store.put_rule(edited)
    store.delete_rule(DIVERGED)

    AlertManager(store, watcher, config=MonitoringConfig(training_stall_after_s=120, training_gap=0.3,
                                                          training_max_loss=5))
    assert store.rule(STALLED).training_job.stalled.no_step_for.seconds == 120  # untouched: follows
    assert math.isclose(store.rule(GAP).training_job.train_val_gap.gap, 0.9)  # edited: kept
    assert store.rule(DIVERGED) is None  # deleted: stays deleted
    store.close()


def _event(job: str, when: float, **kind: Any) -> ev_pb.TrainingJobEvent:
    event = ev_pb.TrainingJobEvent(training_job=job, **kind)
    event.time.FromNanoseconds(int(when * 1e9))
    return event


def _state(job: str, when: float, to: int) -> ev_pb.TrainingJobEvent:
    return _event(job, when, state_changed=ev_pb.StateChanged(to_state=to))


def _progress(job: str, when: float, step: int, loss: float) -> ev_pb.TrainingJobEvent:
    return _event(job, when, progress=job_pb.TrainingProgress(step=step, train_loss=loss))


async def test_a_restart_reads_the_history_and_alerts_only_on_what_still_holds(
    monitoring_factory: Any, stub_factory: Any, valkey: EmbeddedValkey, stream_prefix: str,
) -> None:
    stream = stream_prefix + "events.training"
    now = time.time()
    ended, running = "trainingJobs/ended", "trainingJobs/running"
    history = [
        # Diverged ten minutes ago, then ended: nothing to alert on any more.
        _state(ended, now - 600, job_pb.TRAINING_JOB_STATE_RUNNING),
        _progress(ended, now - 599, 10, math.nan),
        _state(ended, now - 598, job_pb.TRAINING_JOB_STATE_FAILED),
        # Running, last step five minutes ago: stalled now.
        _state(running, now - 400, job_pb.TRAINING_JOB_STATE_RUNNING),
        _progress(running, now - 300, 50, 1.5),
    ]
    async with EventBus(BusConfig(url=valkey.url)) as bus:
        for event in history:
            await publish_event(bus, stream, event, source="training", subject=event.training_job)

    mon = await monitoring_factory(redis_url=valkey.url, training_events_stream=stream,
                                   alerts_stream=stream_prefix + "events.alerts",
                                   events_stream=stream_prefix + "events.health", training_stall_after_s=60)
    stub = stub_factory(mon.port)
    async with asyncio.timeout(20):
        while not (alerts := (await stub.ListAlerts(rr.ListAlertsRequest())).alerts):
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a few more evaluations: nothing else may fire
    alerts = (await stub.ListAlerts(rr.ListAlertsRequest())).alerts
    assert [(a.rule, a.labels["training_job"]) for a in alerts] == [(STALLED, running)]
    assert alerts[0].state == alert_pb2.ALERT_STATE_FIRING and alerts[0].value >= 300
    assert mon.alerts.tracker is not None and set(mon.alerts.tracker.jobs) == {running}

    # The job reports a step: resolved; then it ends.
    async with EventBus(BusConfig(url=valkey.url)) as bus:
        await publish_event(bus, stream, _progress(running, time.time(), 51, 1.4), source="training", subject=running)
        async with asyncio.timeout(10):
            while (await stub.GetAlert(rr.GetAlertRequest(name=alerts[0].name))).state != alert_pb2.ALERT_STATE_RESOLVED:
                await asyncio.sleep(0.1)
        await publish_event(bus, stream, _state(running, time.time(), job_pb.TRAINING_JOB_STATE_SUCCEEDED),
                            source="training", subject=running)
        async with asyncio.timeout(10):
            while mon.alerts.tracker.jobs:
                await asyncio.sleep(0.1)
        # A progress event that arrives after the job ended (it travels apart from the
        # state changes) does not bring the job back.
        await publish_event(bus, stream, _progress(running, time.time(), 52, 1.3), source="training", subject=running)
        await publish_event(bus, stream, _progress(ended, time.time(), 11, math.nan), source="training", subject=ended)
        await asyncio.sleep(1.0)
        assert not mon.alerts.tracker.jobs
    resolved = await stub.GetAlert(rr.GetAlertRequest(name=alerts[0].name))
    assert "Resolved: step 51 reached." in resolved.description


# ------------------------------------------------------------------ the rules, pure
def _tracker(now: list[float]) -> TrainingTracker:
    return TrainingTracker(None, "events.training", clock=lambda: now[0])


def _eval(job: str, when: float, step: int, train: float, val: float) -> ev_pb.TrainingJobEvent:
    progress = job_pb.TrainingProgress(step=step, train_loss=0.1, train_val_gap=train - val,
                                       eval=job_pb.EvalMetrics(step=step, accuracy=val, loss=1.0))
    return _event(job, when, progress=progress)


def _condition(**kind: Any) -> alert_rule_pb2.TrainingJobCondition:
    return alert_rule_pb2.TrainingJobCondition(**kind)


def test_stall_threshold_adapts_to_how_often_a_job_reports() -> None:
    now = [1000.0]
    tracker, job = _tracker(now), "trainingJobs/slow"
    rules = TrainingRules(tracker)
    stalled = _condition(stalled=alert_rule_pb2.TrainingJobStalled(no_step_for={"seconds": 10}))
    tracker.observe(_state(job, 1000.0, job_pb.TRAINING_JOB_STATE_RUNNING))
    for i in range(1, 5):  # a progress event every 30 s
        now[0] = 1000.0 + 30 * i
        tracker.observe(_progress(job, now[0], 10 * i, 2.0))
    now[0] = 1120.0 + 100  # 100 s quiet: more than 10 s, less than 5 × 30 s
    assert rules.findings("r", stalled, now[0]) == []
    now[0] = 1120.0 + 151
    [finding] = rules.findings("r", stalled, now[0])
    assert finding.key == job and finding.since == 1120.0 + 150 and finding.value == 151
    tracker.observe(_state(job, now[0], job_pb.TRAINING_JOB_STATE_PAUSED))  # not RUNNING: not stalled
    assert rules.findings("r", stalled, now[0]) == []


def test_grokking_counts_plateau_evaluations_through_spikes_and_fires_once() -> None:
    now = [0.0]
    tracker, job = _tracker(now), "trainingJobs/grok"
    rules = TrainingRules(tracker)
    onset = _condition(grokking_onset=alert_rule_pb2.GrokkingOnset(
        validation_accuracy=0.5, memorized_accuracy=0.9, plateau_evaluations=3))
    tracker.observe(_state(job, 0.0, job_pb.TRAINING_JOB_STATE_RUNNING))
    curve = [(0.3, 0.05), (0.95, 0.05), (0.6, 0.05), (0.97, 0.06), (0.99, 0.4)]  # 2 plateau evals, a spike
    for i, (train, val) in enumerate(curve, start=1):
        now[0] = float(i)
        tracker.observe(_eval(job, now[0], 100 * i, train, val))
    now[0] = 5.5
    assert rules.findings("r", onset, now[0]) == []  # val 0.4 counts as the 3rd plateau eval
    now[0] = 6.0
    tracker.observe(_eval(job, 6.0, 600, 1.0, 0.7))
    [finding] = rules.findings("r", onset, now[0])
    assert finding.value == 0.7 and finding.since == 6.0 and "step 600" in finding.summary
    tracker.observe(_eval(job, 7.0, 700, 1.0, 0.3))  # a dip later changes nothing: it happened
    assert rules.findings("r", onset, 7.0) == [finding]
    # A job that generalizes with no memorization plateau is not grokking.
    other = "trainingJobs/plain"
    tracker.observe(_eval(other, 8.0, 100, 0.6, 0.55))
    assert [f.key for f in rules.findings("r", onset, 8.0)] == [job]


def test_gap_must_hold_at_every_evaluation_for_the_window() -> None:
    tracker, job = _tracker([100.0]), "trainingJobs/gap"  # events are never "after now"
    rules = TrainingRules(tracker)
    gap = _condition(train_val_gap=alert_rule_pb2.TrainValGap(gap=0.5, for_duration={"seconds": 10}))
    for t, (train, val) in zip((0.0, 5.0, 8.0, 12.0), ((0.9, 0.1), (0.9, 0.5), (0.9, 0.2), (0.95, 0.2))):
        tracker.observe(_eval(job, t, int(t * 10), train, val))
    # The gap closed at t=5, so it has held since t=8 only: 4 s < 10 s.
    assert rules.findings("r", gap, 12.0) == []
    [finding] = rules.findings("r", gap, 18.0)
    assert finding.since == 8.0 and finding.value == pytest.approx(0.75)


def test_diverged_on_non_finite_or_exploding_loss_only() -> None:
    tracker, job = _tracker([10.0]), "trainingJobs/d"
    rules = TrainingRules(tracker)
    diverged = _condition(diverged=alert_rule_pb2.TrainingJobDiverged(max_loss=100))
    tracker.observe(_progress(job, 1.0, 1, 50.0))
    assert rules.findings("r", diverged, 10.0) == []
    tracker.observe(_progress(job, 2.0, 2, math.inf))
    assert [f.value for f in rules.findings("r", diverged, 10.0)] == [math.inf]
    tracker.observe(_progress(job, 3.0, 3, 3.0))
    assert rules.findings("r", diverged, 10.0) == []  # sane again
    tracker.observe(_progress(job, 4.0, 4, 250.0))
    [finding] = rules.findings("r", diverged, 10.0)
    assert finding.value == 250.0 and "> 100" in finding.summary
