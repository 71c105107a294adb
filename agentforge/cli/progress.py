"""Progress display for training jobs and phase runs (``forge jobs watch``, ``forge phase
start --follow``, ``make run``).

On a terminal: one Rich progress bar per training job (step / total, train loss, steps/s,
ETA) under a line for the phase run, redrawn in place, with log lines printed above the
bars. Anywhere else (CI logs, a pipe, a file): plain text lines, no control characters
(no colour, no carriage returns, no cursor movement), at most one progress line per job
every ``plain_interval_s`` seconds plus every state change, so a log stays readable.

Feed it events: :meth:`ProgressDisplay.job_event` takes a
``agentforge.training.v1.TrainingJobEvent``, :meth:`ProgressDisplay.phase_event` a
``agentforge.forge.v1.PhaseRunEvent``; :meth:`ProgressDisplay.line` prints any text.
It is thread-safe (jobs are followed from worker threads).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from agentforge.forge.v1 import phase_run_event_pb2, phase_run_pb2
from agentforge.training.v1 import training_job_event_pb2, training_job_pb2

__all__ = ["ProgressDisplay", "clean", "make_console"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """``text`` without control characters (ANSI escapes, CR, BEL ...); tabs and newlines stay."""
    return _CONTROL.sub("", text)


def make_console(stream: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A Rich console: styled on a terminal; on anything else no colour, no escape codes
    and a wide fixed width (so lines are not wrapped at 80 columns)."""
    out = stream if stream is not None else (sys.stderr if stderr else sys.stdout)
    tty = bool(getattr(out, "isatty", lambda: False)())
    if tty:
        return Console(file=out, stderr=stderr)
    return Console(file=out, stderr=stderr, force_terminal=False, no_color=True, color_system=None,
                   width=200, soft_wrap=True, emoji=False, highlight=False)


def job_state(value: int) -> str:
    return training_job_pb2.TrainingJobState.Name(value).removeprefix("TRAINING_JOB_STATE_")


def run_state(value: int) -> str:
    return phase_run_pb2.PhaseRunState.Name(value).removeprefix("PHASE_RUN_STATE_")


def _eta(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Job:
    name: str
    task: TaskID | None = None
    step: int = 0
    total: int = 0
    loss: float | None = None
    rate: float = 0.0
    eta_s: float = 0.0
    state: str = "QUEUED"
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    checkpoint_step: int = 0
    last_plain: float | None = None


class ProgressDisplay:
    """Bars on a TTY, plain lines elsewhere; use as a context manager around a follow loop.

    ``stream``: where to write (stdout by default); ``tty``: force the mode (default:
    ``stream.isatty()``); ``plain_interval_s``: minimum seconds between two plain progress
    lines of one job.
    """

    def __init__(self, stream: IO[str] | None = None, *, tty: bool | None = None,
                 plain_interval_s: float = 5.0) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.tty = bool(self._stream.isatty()) if tty is None else tty
        self.console = make_console(self._stream) if not self.tty else Console(file=self._stream, force_terminal=True)
        self._plain_interval = plain_interval_s
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._progress: Progress | None = None
        self._phase_task: TaskID | None = None
        if self.tty:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                refresh_per_second=8,
            )

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    # -- output -------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Print one line (above the bars on a TTY)."""
        text = clean(text)
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(Text(text))
            else:
                self._stream.write(text + "\n")
                self._stream.flush()

    # -- training jobs ------------------------------------------------------------------
    def _job(self, name: str) -> _Job:
        job = self._jobs.get(name)
        if job is None:
            job = self._jobs[name] = _Job(name)
            if self._progress is not None:
                job.task = self._progress.add_task(clean(name.removeprefix("trainingJobs/")), total=None, detail="queued")
        return job

    def job_total(self, name: str, total_steps: int) -> None:
        """Size a job's bar before its first progress event (``spec.max_steps``)."""
        with self._lock:
            job = self._job(name)
            job.total = int(total_steps) or job.total
            if self._progress is not None and job.task is not None:
                self._progress.update(job.task, total=job.total or None)

    def job_event(self, event: training_job_event_pb2.TrainingJobEvent) -> None:
        """Update the job's bar (progress, eval) or print its state change / checkpoint / log."""
        kind = event.WhichOneof("kind")
        with self._lock:
            job = self._job(event.training_job)
            if kind == "progress":
                self._apply_progress(job, event.progress)
                self._render(job)
            elif kind == "state_changed":
                sc = event.state_changed
                job.state = job_state(sc.to_state)
                reason = f" ({sc.reason})" if sc.reason else ""
                error = f": {sc.error.message}" if sc.error.message else ""
                self.line(f"{job.name}: {job_state(sc.from_state)} -> {job.state}{reason}{error}")
                if self._progress is not None:
                    self._render(job)
            elif kind == "checkpoint_written":
                ck = event.checkpoint_written
                job.checkpoint_step = int(ck.step)
                if ck.final:
                    self.line(f"{job.name}: final checkpoint at step {ck.step} ({ck.size_bytes} bytes)")
            elif kind == "eval_completed":
                job.eval_loss, job.eval_accuracy = event.eval_completed.loss, event.eval_completed.accuracy
                self._render(job)
            elif kind == "log":
                self.line(f"{job.name}: {event.log.message}")
            elif kind == "control_applied":
                ca = event.control_applied
                parts = [f"{k}={getattr(ca, k):g}" for k in ("learning_rate", "grokfast_alpha", "grokfast_lamb")
                         if ca.HasField(k)]
                self.line(f"{job.name}: adjusted at step {ca.step}: {' '.join(parts) or 'checkpoint requested'}")

    @staticmethod
    def _apply_progress(job: _Job, p: training_job_pb2.TrainingProgress) -> None:
        if p.total_steps:
            job.total = int(p.total_steps)
        if p.step:
            job.step = int(p.step)
        if p.train_loss or p.step:
            job.loss = p.train_loss
        job.rate = p.steps_per_second
        job.eta_s = p.eta_seconds

    def _detail(self, job: _Job) -> str:
        loss = f"loss {job.loss:.4f}" if job.loss is not None else "loss -"
        rate = f"{job.rate:.1f} step/s" if job.rate else ""
        val = f"val_loss {job.eval_loss:.4f} val_acc {job.eval_accuracy:.3f}" if job.eval_loss is not None else ""
        return " ".join(x for x in (job.state.lower(), loss, val, rate) if x)

    def _render(self, job: _Job, *, force: bool = False) -> None:
        if self._progress is not None and job.task is not None:
            self._progress.update(job.task, total=job.total or None, completed=job.step, detail=self._detail(job))
            return
        now = time.monotonic()
        recent = job.last_plain is not None and now - job.last_plain < self._plain_interval
        if not force and recent and job.step < job.total:
            return
        job.last_plain = now
        total = f"/{job.total}" if job.total else ""
        pct = f" {100.0 * job.step / job.total:5.1f}%" if job.total else ""
        self.line(f"{job.name}: step {job.step}{total}{pct} {self._detail(job)} eta {_eta(job.eta_s)}")

    # -- phase runs ---------------------------------------------------------------------
    def phase_event(self, event: phase_run_event_pb2.PhaseRunEvent) -> None:
        """Print state and step changes; move the phase bar on progress events."""
        kind = event.WhichOneof("kind")
        with self._lock:
            if kind == "progress":
                p = event.progress
                if self._progress is not None:
                    if self._phase_task is None:
                        self._phase_task = self._progress.add_task(clean(event.phase_run.name or "phase run"),
                                                                   total=100, detail="")
                    self._progress.update(self._phase_task, completed=round(p.fraction_done * 100),
                                          detail=clean(f"{p.current_step} {p.message}".strip()))
                else:
                    steps = f" {p.steps_done}/{p.steps_total}" if p.steps_total else ""
                    current = f" {p.current_step}" if p.current_step else ""
                    self.line(f"[{p.fraction_done * 100:5.1f}%]{current}{steps} {p.message}".rstrip())
            elif kind == "stream_end":
                return
            else:
                self.line(format_phase_event(event))


def _code_name(code: int) -> str:
    import grpc

    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


def format_phase_event(event: phase_run_event_pb2.PhaseRunEvent) -> str:
    """One line for a phase run event other than progress."""
    kind = event.WhichOneof("kind")
    if kind == "state_changed":
        sc = event.state_changed
        line = f"state {run_state(sc.from_state)} -> {run_state(sc.to_state)}"
        if sc.reason:
            line += f" ({sc.reason})"
        if sc.error.code:
            line += f": {_code_name(sc.error.code)} {sc.error.message}"
        return line
    if kind == "step_changed":
        step = event.step_changed.step
        state = phase_run_pb2.SagaStepState.Name(step.state).removeprefix("SAGA_STEP_STATE_")
        line = f"step {event.step_changed.index} {step.name}: {state}"
        if step.resource:
            line += f" [{step.resource}]"
        if step.error.message:
            line += f" error: {step.error.message}"
        comp = phase_run_pb2.CompensationState.Name(step.compensation_state).removeprefix("COMPENSATION_STATE_")
        if comp in ("RUNNING", "SUCCEEDED", "FAILED"):
            line += f" (compensation {comp.lower()})"
        return line
    if kind == "log":
        sev = phase_run_event_pb2.LogSeverity.Name(event.log.severity).removeprefix("LOG_SEVERITY_")
        where = f" {event.log.step}:" if event.log.step else ""
        return f"[{sev}]{where} {event.log.message}"
    return f"event {event.sequence} ({run_state(event.phase_run.state)})"

