"""The progress display of `forge ... --follow` and `make run`: bars on a TTY, clean lines elsewhere."""

from __future__ import annotations

import io
import re

from agentforge.cli.progress import ProgressDisplay, clean
from agentforge.forge.v1 import phase_run_event_pb2, phase_run_pb2
from agentforge.training.v1 import training_job_event_pb2 as ev_pb2
from agentforge.training.v1 import training_job_pb2

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
JOB = "trainingJobs/abc"
RUNNING, SUCCEEDED = training_job_pb2.TRAINING_JOB_STATE_RUNNING, training_job_pb2.TRAINING_JOB_STATE_SUCCEEDED


def progress(step: int, loss: float) -> ev_pb2.TrainingJobEvent:
    return ev_pb2.TrainingJobEvent(training_job=JOB, progress=training_job_pb2.TrainingProgress(
        step=step, total_steps=100, train_loss=loss, steps_per_second=20.0, eta_seconds=(100 - step) / 20))


def state(to: int, frm: int = RUNNING) -> ev_pb2.TrainingJobEvent:
    return ev_pb2.TrainingJobEvent(training_job=JOB, state_changed=ev_pb2.StateChanged(from_state=frm, to_state=to))


def feed(display: ProgressDisplay) -> None:
    display.job_total(JOB, 100)
    display.job_event(state(RUNNING, training_job_pb2.TRAINING_JOB_STATE_QUEUED))
    for step in range(1, 101):
        display.job_event(progress(step, 3.0 - step / 100))
    display.job_event(ev_pb2.TrainingJobEvent(training_job=JOB, log=ev_pb2.LogLine(message="evil \x1b[31mred\x07")))
    display.job_event(state(SUCCEEDED))


def test_plain_lines_outside_a_terminal_are_rate_limited_and_control_free() -> None:
    out = io.StringIO()
    with ProgressDisplay(out, plain_interval_s=3600) as display:
        assert not display.tty
        feed(display)
    text = out.getvalue()
    assert not CONTROL.search(text), repr(text)
    lines = text.splitlines()
    steps = [ln for ln in lines if ": step " in ln]
    # The first progress line and the last (100/100); nothing in between within the interval.
    assert steps == [
        f"{JOB}: step 1/100   1.0% running loss 2.9900 20.0 step/s eta 0:00:05",
        f"{JOB}: step 100/100 100.0% running loss 2.0000 20.0 step/s eta -",
    ], lines
    assert f"{JOB}: QUEUED -> RUNNING" in lines and f"{JOB}: RUNNING -> SUCCEEDED" in lines
    assert f"{JOB}: evil [31mred" in lines  # escape characters stripped from server text


def test_a_terminal_gets_a_live_bar_per_job() -> None:
    out = io.StringIO()
    with ProgressDisplay(out, tty=True) as display:
        feed(display)
        display.phase_event(phase_run_event_pb2.PhaseRunEvent(
            phase_run=phase_run_pb2.PhaseRun(name="phaseRuns/r1"),
            progress=phase_run_pb2.PhaseRunProgress(fraction_done=0.5, current_step="train", message="half")))
    text = out.getvalue()
    assert "\x1b[" in text  # a real terminal rendering (cursor movement, styles)
    plain = clean(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))
    assert "abc" in plain and "100/100" in plain and "loss 2.0000" in plain
    assert "phaseRuns/r1" in plain and "50/100" in plain
    assert "RUNNING -> SUCCEEDED" in plain


def test_clean_keeps_text_and_newlines() -> None:
    assert clean("a\tb\nc\r\x1b[0m\x9b") == "a\tb\nc[0m"
