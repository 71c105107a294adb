"""Follow a phase run with a progress bar per training job it starts.

:class:`PhaseFollower` is fed the run's ``PhaseRunEvent``s (from any loop that watches the
run: ``forge phase start --follow`` or the launcher's ``make run``). It renders them on a
:class:`agentforge.cli.progress.ProgressDisplay` and, the first time a saga step names a
``trainingJobs/...`` resource (or several, comma-separated), starts a thread per job that
watches it through the edge
(:meth:`agentforge.client.Client.training` ``.watch_training_job``, which resumes by
cursor on its own) so its bar shows step, loss and ETA while the run goes on.
"""

from __future__ import annotations

import threading

from agentforge.cli.progress import ProgressDisplay
from agentforge.client import ApiError, Client
from agentforge.forge.v1 import phase_run_event_pb2
from agentforge.training.v1 import training_job_pb2

__all__ = ["PhaseFollower", "follow_job"]


def follow_job(client: Client, name: str, display: ProgressDisplay) -> training_job_pb2.TrainingJob:
    """Replay a training job's events from the start, then follow it live until it ends;
    returns the final ``TrainingJob``."""
    display.job_total(name, client.training.get_training_job(name=name).spec.max_steps)
    for event in client.training.watch_training_job(name=name):
        display.job_event(event)
    return client.training.get_training_job(name=name)


class PhaseFollower:
    """Call it with each ``PhaseRunEvent``; :meth:`join` waits for the job followers."""

    def __init__(self, client: Client, display: ProgressDisplay) -> None:
        self.client = client
        self.display = display
        self._threads: dict[str, threading.Thread] = {}

    def __call__(self, event: phase_run_event_pb2.PhaseRunEvent) -> None:
        self.display.phase_event(event)
        if event.WhichOneof("kind") != "step_changed":
            return
        # One resource, or several comma-separated (a step that trains candidates in parallel).
        for resource in event.step_changed.step.resource.split(","):
            resource = resource.strip()
            if resource.startswith("trainingJobs/") and resource not in self._threads:
                thread = threading.Thread(target=self._follow, args=(resource,), daemon=True,
                                          name=f"follow-{resource}")
                self._threads[resource] = thread
                thread.start()

    def _follow(self, job: str) -> None:
        try:
            follow_job(self.client, job, self.display)
        except ApiError as exc:  # the run's own events still say how it ends
            self.display.line(f"{job}: stopped following ({exc.code.name}: {exc.message})")

    def join(self, timeout_s: float = 30.0) -> None:
        for thread in self._threads.values():
            thread.join(timeout=timeout_s)
