"""Training alert rules without a training service: the built-in rules and the config,
and a monitoring service (re)started over a retained history of job events."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from agentforge.monitoring.v1 import alert_pb2
from agentforge.monitoring.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from services.monitoring.alerts import TRAINING_RULES, AlertManager
from services.monitoring.config import MonitoringConfig
from services.monitoring.store import MonitoringStore
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
