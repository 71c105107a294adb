"""Training alerts: what each training job is doing, judged against ``TrainingJobCondition``.

Source: the ``Event`` envelopes the training service publishes on ``events.training``
(``training_job_event`` payloads: state changes, progress with the latest evaluation).
:class:`TrainingTracker` follows the stream — replaying the retained history first, so a
restarted monitoring service knows the jobs that are running — and keeps one
:class:`JobState` per job that has not ended. Times are the events' own (the worker's
clock, which is this host's or NTP-synced), never after ``now``.

:class:`TrainingRules` judges the jobs against each rule's condition (pure logic over the
tracker's state; per (rule, job) memory for the evaluation-based kinds):

* **stalled** — RUNNING and no new step for ``no_step_for``, or for five times the job's
  recent interval between progress events when that is longer (a job that reports every
  two minutes is not stalled after one). Since the later of the last step and the move
  to RUNNING. Resolves at the next step or when the job leaves RUNNING.
* **diverged** — the latest training or validation loss is NaN or infinite, or the
  training loss is above ``max_loss``. Resolves when a later loss is sane again or the
  job ends.
* **grokking onset** — after ``plateau_evaluations`` evaluations at which train accuracy
  was ≥ ``memorized_accuracy`` while validation accuracy was below
  ``validation_accuracy`` (counted since the job was first seen, not necessarily in a
  row: memorizing models spike), an evaluation reaches ``validation_accuracy``
  (Power et al. 2022; GrokFast, Lee et al. 2024, arXiv:2405.20233, exists to bring this
  moment sooner). Fires once per job and stays open until the job ends.
* **train/val gap** — train accuracy minus validation accuracy ≥ ``gap`` at every
  evaluation since a time at least ``for_duration`` ago. Resolves at an evaluation with a
  smaller gap, or when the job ends.

Train accuracy at an evaluation is the evaluation's own (``validation accuracy +
train_val_gap`` of the progress event carrying it), averaged over the steps since the
previous evaluation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agentforge.events.v1 import event_pb2
from agentforge.monitoring.v1 import alert_rule_pb2
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from services.shared.bus import Cursor, EpochChanged, EventBus, TypeMismatch

__all__ = ["EvalPoint", "Finding", "JobState", "TrainingRules", "TrainingTracker"]

_log = logging.getLogger(__name__)

RUNNING = job_pb.TRAINING_JOB_STATE_RUNNING
TERMINAL = frozenset({job_pb.TRAINING_JOB_STATE_SUCCEEDED, job_pb.TRAINING_JOB_STATE_FAILED,
                      job_pb.TRAINING_JOB_STATE_CANCELLED})
#: Evaluations kept per job (rules read them incrementally, so only a backlog needs them).
_EVALS_KEPT = 4096
#: Recent intervals between progress events used for the stall threshold.
_GAPS_KEPT = 8
#: Multiple of the recent progress interval a job must be quiet before it counts as stalled.
STALL_INTERVALS = 5.0


def _state_name(state: int) -> str:
    return job_pb.TrainingJobState.Name(state).removeprefix("TRAINING_JOB_STATE_")


@dataclass(frozen=True, slots=True)
class EvalPoint:
    time: float
    step: int
    train_accuracy: float
    validation_accuracy: float

    @property
    def gap(self) -> float:
        return self.train_accuracy - self.validation_accuracy


@dataclass(slots=True)
class JobState:
    """What the tracker knows of one job that has not ended."""

    name: str
    state: int = job_pb.TRAINING_JOB_STATE_UNSPECIFIED
    #: When it last moved to RUNNING (None: not seen).
    running_since: float | None = None
    step: int = 0
    step_time: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=_GAPS_KEPT))
    train_loss: float | None = None
    eval_loss: float | None = None
    loss_time: float | None = None
    loss_step: int = 0
    evals: deque[EvalPoint] = field(default_factory=lambda: deque(maxlen=_EVALS_KEPT))
    #: Index of ``evals[0]`` among all evaluations seen for the job.
    evals_offset: int = 0
    last_eval_step: int = -1

    @property
    def evals_seen(self) -> int:
        return self.evals_offset + len(self.evals)


class TrainingTracker:
    """Follows ``events.training`` and keeps a :class:`JobState` per live job."""

    def __init__(self, bus: EventBus | None, stream: str, *, clock: Callable[[], float] = time.time) -> None:
        self._bus = bus
        self.stream = stream
        self._clock = clock
        self.jobs: dict[str, JobState] = {}
        #: Jobs that ended recently -> why (for resolve reasons).
        self.ended: OrderedDict[str, str] = OrderedDict()
        #: True once the history retained at start has been read (alerts wait for it,
        #: so a restart does not raise alerts for moments long past).
        self.ready = bus is None
        self._head: tuple[int, int] | None = None

    # -- consuming -------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the stream until cancelled (reconnects inside ``EventBus.follow``)."""
        assert self._bus is not None
        self.ready = False  # (again, after a restart): replayed states are not judged
        while True:
            try:
                head = await self._bus.latest_cursor(self.stream)
                break
            except Exception as exc:  # noqa: BLE001 - Valkey away at start: try again
                _log.warning("training events: cannot read %s yet: %s", self.stream, exc)
                await asyncio.sleep(1.0)
        self._head = _entry(head.entry_id)
        if self._head == (0, 0):
            self.ready = True
        async for item in self._bus.follow(self.stream, Cursor(head.epoch, "0-0")):
            if isinstance(item, EpochChanged):
                _log.warning("training events: %s lost its history (epoch %s -> %s)",
                             self.stream, item.previous, item.current)
                self.ready = True
                continue
            try:
                event = item.unpack(event_pb2.Event)
            except TypeMismatch:
                continue
            except Exception:  # noqa: BLE001 - one bad entry must not stop the follower
                _log.exception("training events: unreadable entry %s", item.cursor)
                continue
            if event.WhichOneof("payload") == "training_job_event":
                when = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else item.time / 1000
                self.observe(event.training_job_event, when)
            if not self.ready and self._head is not None and _entry(item.cursor.entry_id) >= self._head:
                self.ready = True

    def observe(self, event: ev_pb.TrainingJobEvent, fallback_time: float | None = None) -> None:
        """Apply one job event (public for tests and for in-process feeding)."""
        now = self._clock()
        when = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else (fallback_time or now)
        when = min(when, now)
        name = event.training_job
        kind = event.WhichOneof("kind")
        if name in self.ended:
            # Terminal states are final. Progress travels apart from state changes (the
            # worker publishes it directly, state changes go through the training outbox),
            # so a progress event can arrive after its job ended: it must not revive it.
            return
        if kind == "state_changed":
            to = event.state_changed.to_state
            if to in TERMINAL:
                self.jobs.pop(name, None)
                self.ended[name] = f"{name} is {_state_name(to)}"
                self.ended.move_to_end(name)
                while len(self.ended) > 1000:
                    self.ended.popitem(last=False)
                return
            job = self._job(name)
            if to == RUNNING and job.state != RUNNING:
                job.running_since = when
                job.gaps.clear()
            job.state = to
        elif kind == "progress":
            self._progress(self._job(name), event.progress, when)

    def _job(self, name: str) -> JobState:
        job = self.jobs.get(name)
        if job is None:
            job = self.jobs[name] = JobState(name)
        return job

    def _progress(self, job: JobState, p: job_pb.TrainingProgress, when: float) -> None:
        if job.state != RUNNING:  # progress means it runs (its RUNNING event may be trimmed)
            job.state = RUNNING
            job.running_since = when if job.running_since is None else job.running_since
        if p.step > job.step or job.step_time is None:
            if job.step_time is not None and p.step > job.step:
                job.gaps.append(max(0.0, when - job.step_time))
            job.step, job.step_time = p.step, when
        job.train_loss = p.train_loss
        job.eval_loss = p.eval.loss if p.HasField("eval") else None
        job.loss_time, job.loss_step = when, p.step
        if p.HasField("eval") and p.eval.step > job.last_eval_step:
            job.last_eval_step = p.eval.step
            val = p.eval.accuracy
            if len(job.evals) == job.evals.maxlen:
                job.evals_offset += 1  # the append drops the oldest
            job.evals.append(EvalPoint(when, p.eval.step, val + p.train_val_gap, val))


def _entry(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# ------------------------------------------------------------------------ the rules
@dataclass(frozen=True, slots=True)
class Finding:
    """A job for which a rule's condition holds now."""

    key: str  # the job's name
    since: float
    value: float
    summary: str
    detail: str


def _fmt_s(s: float) -> str:
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


@dataclass(slots=True)
class _EvalCursor:
    seen: int = 0  # evaluations of the job processed
    plateau: int = 0
    onset: Finding | None = None
    gap_since: float | None = None
    gap_last: EvalPoint | None = None


class TrainingRules:
    """Judges the tracker's jobs against training conditions (see the module docstring)."""

    def __init__(self, tracker: TrainingTracker) -> None:
        self.tracker = tracker
        self._cursors: dict[tuple[str, str], _EvalCursor] = {}

    def forget(self, rules: set[str]) -> None:
        """Drop memory of rules that are gone and of jobs that ended."""
        jobs = self.tracker.jobs
        for key in [k for k in self._cursors if k[0] not in rules or k[1] not in jobs]:
            del self._cursors[key]

    def reason(self, rule: str, cond: alert_rule_pb2.TrainingJobCondition, job: str) -> str:
        """Why an open alert of ``job`` no longer holds, as far as the tracker knows."""
        ended = self.tracker.ended.get(job)
        if ended is not None:
            return ended
        state = self.tracker.jobs.get(job)
        if state is None:
            return f"{job} is no longer known"
        if state.state != RUNNING:
            return f"{job} is {_state_name(state.state)}"
        kind = cond.WhichOneof("kind")
        if kind == "stalled":
            return f"step {state.step} reached"
        if kind == "diverged" and state.train_loss is not None:
            return f"train loss {state.train_loss:.4g} at step {state.loss_step}"
        if kind == "train_val_gap" and state.evals:
            e = state.evals[-1]
            return f"train/val gap {e.gap:.2f} at step {e.step}"
        return "condition no longer holds"

    def findings(self, rule: str, cond: alert_rule_pb2.TrainingJobCondition, now: float) -> list[Finding]:
        kind = cond.WhichOneof("kind")
        out: list[Finding] = []
        for job in self.tracker.jobs.values():
            finding = None
            if kind == "stalled":
                finding = self._stalled(job, cond.stalled, now)
            elif kind == "diverged":
                finding = self._diverged(job, cond.diverged)
            elif kind == "grokking_onset":
                finding = self._grokking(rule, job, cond.grokking_onset)
            elif kind == "train_val_gap":
                finding = self._gap(rule, job, cond.train_val_gap, now)
            if finding is not None:
                out.append(finding)
        return out

    # -- kinds -----------------------------------------------------------------------
    @staticmethod
    def _stalled(job: JobState, cond: alert_rule_pb2.TrainingJobStalled, now: float) -> Finding | None:
        if job.state != RUNNING or job.running_since is None:
            return None
        last = max(job.running_since, job.step_time or job.running_since)
        limit = cond.no_step_for.ToNanoseconds() / 1e9
        if job.gaps:
            limit = max(limit, STALL_INTERVALS * statistics.median(job.gaps))
        quiet = now - last
        if quiet < limit:
            return None
        at = f"step {job.step}" if job.step_time is not None else "before its first step"
        return Finding(job.name, last + limit, quiet,
                       f"{job.name} stalled: no step for {_fmt_s(quiet)} ({at})",
                       f"RUNNING without a new step for {quiet:.1f}s (limit {limit:.1f}s); last step {job.step}.")

    @staticmethod
    def _diverged(job: JobState, cond: alert_rule_pb2.TrainingJobDiverged) -> Finding | None:
        if job.loss_time is None:
            return None
        train, val = job.train_loss, job.eval_loss
        bad = None
        if train is not None and not math.isfinite(train):
            bad = (train, f"train loss {train} at step {job.loss_step}")
        elif val is not None and not math.isfinite(val):
            bad = (val, f"validation loss {val} at step {job.loss_step}")
        elif train is not None and train > cond.max_loss:
            bad = (train, f"train loss {train:.4g} > {cond.max_loss:g} at step {job.loss_step}")
        if bad is None:
            return None
        return Finding(job.name, job.loss_time, bad[0], f"{job.name} diverged: {bad[1]}",
                       f"The loss is {'not finite' if not math.isfinite(bad[0]) else 'exploding'}: {bad[1]}. "
                       "Lower the learning rate or resume from an earlier checkpoint.")

    def _cursor(self, rule: str, job: JobState) -> tuple[_EvalCursor, list[EvalPoint]]:
        cur = self._cursors.setdefault((rule, job.name), _EvalCursor())
        start = max(cur.seen - job.evals_offset, 0)
        new = list(job.evals)[start:]
        cur.seen = job.evals_seen
        return cur, new

    def _grokking(self, rule: str, job: JobState, cond: alert_rule_pb2.GrokkingOnset) -> Finding | None:
        cur, new = self._cursor(rule, job)
        for e in new:
            if cur.onset is not None:
                break
            if e.validation_accuracy >= cond.validation_accuracy:
                if cur.plateau >= cond.plateau_evaluations:
                    cur.onset = Finding(
                        job.name, e.time, e.validation_accuracy,
                        f"{job.name} grokking onset: validation accuracy {e.validation_accuracy:.3f} at step {e.step}",
                        f"Validation accuracy reached {e.validation_accuracy:.3f} (≥ {cond.validation_accuracy:g}) at "
                        f"step {e.step} after {cur.plateau} evaluations with the training set memorized "
                        f"(train accuracy ≥ {cond.memorized_accuracy:g}) and validation accuracy below it.")
            elif e.train_accuracy >= cond.memorized_accuracy:
                cur.plateau += 1
        return cur.onset

    def _gap(self, rule: str, job: JobState, cond: alert_rule_pb2.TrainValGap, now: float) -> Finding | None:
        cur, new = self._cursor(rule, job)
        for e in new:
            if e.gap >= cond.gap:
                if cur.gap_since is None:
                    cur.gap_since = e.time
                cur.gap_last = e
            else:
                cur.gap_since, cur.gap_last = None, None
        if cur.gap_since is None or cur.gap_last is None:
            return None
        held = now - cur.gap_since
        if held < cond.for_duration.ToNanoseconds() / 1e9:
            return None
        e = cur.gap_last
        return Finding(job.name, cur.gap_since, e.gap,
                       f"{job.name} train/val gap {e.gap:.2f} for {_fmt_s(held)} (step {e.step})",
                       f"Train accuracy {e.train_accuracy:.3f} vs validation accuracy {e.validation_accuracy:.3f} "
                       f"at step {e.step}: a gap ≥ {cond.gap:g} at every evaluation for {held:.0f}s — the model "
                       "memorizes without generalizing (more weight decay or GrokFast help it grok).")
