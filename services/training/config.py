"""Configuration of the training service (queue, workers, storage), read from the environment.

Every knob is a field of :class:`TrainingConfig`, documented once below. The gRPC side
(port, metrics, grace) is the shared :class:`services.shared.config.ServerConfig`.

==============================  ===========================================================
env                             field
==============================  ===========================================================
``AF_DATA_DIR``                 ``data_dir`` = ``$AF_DATA_DIR/training``
``AF_TRAINING_DATABASE_URL``    ``database_url`` (``sqlite:///abs/path.db``)
``REDIS_URL``                   ``redis_url``
``AF_TRAINING_WORKERS``         ``workers``
``AF_TRAINING_HEARTBEAT_INTERVAL_S`` / ``…_TIMEOUT_S``  heartbeat
``AF_TRAINING_MAX_ATTEMPTS``    ``max_attempts``
``AF_TRAINING_TORCH_THREADS``   ``torch_threads`` (0 = max(1, cpus // workers))
``AF_TRAINING_KEY_PREFIX``      ``key_prefix`` (Redis key prefix, for tests)
``AF_TRAINING_RECONCILE_INTERVAL_S``  ``reconcile_interval_s``
``AF_TRAINING_ENQUEUE_BUDGET_S``  ``enqueue_budget_s``
``AF_TRAINING_OUTBOX_POLL_S``   ``outbox_poll_s``
==============================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.shared.config import env_overrides

__all__ = ["TrainingConfig"]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """How the training service stores, queues and runs jobs. Picklable (sent to workers)."""

    #: Root of the service's durable state: ``jobs.db`` and ``runs/<job>/checkpoints``.
    data_dir: Path = Path("var/training")
    #: Job database; empty means ``sqlite:///<data_dir>/jobs.db``. Only SQLite is supported.
    database_url: str = ""
    #: Redis (Valkey) holding the job queue, heartbeats, control and event streams.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Worker processes started with the service (``spawn``); 0 runs none.
    workers: int = 2
    #: Seconds between a worker's heartbeats.
    heartbeat_interval_s: float = 1.0
    #: A job whose worker has not heartbeaten for this long is claimed by another worker.
    heartbeat_timeout_s: float = 10.0
    #: Failed attempts (errors or lost workers) after which a job ends FAILED and its
    #: queue entry is dead-lettered.
    max_attempts: int = 3
    #: ``torch.set_num_threads`` in each worker; 0 = max(1, cpu count // workers).
    torch_threads: int = 0
    #: Seconds an idle worker waits between queue polls.
    poll_interval_s: float = 0.05
    #: Prefix of every Redis key the service uses (isolates tests sharing one Redis).
    key_prefix: str = ""
    #: Seconds between reconciler passes (database vs queue: re-enqueue QUEUED jobs whose
    #: entry is gone, reclaim RUNNING jobs nobody runs). A job must be found out of step
    #: on two passes this far apart before it is touched.
    reconcile_interval_s: float = 2.0
    #: Longest time (s) a Create/Resume waits for Redis to take the queue entry (and the
    #: watchers' event) before answering anyway: the job is stored, and the reconciler
    #: enqueues it once Redis is back. The call's own deadline shortens it.
    enqueue_budget_s: float = 2.0
    #: Seconds between the outbox relay's passes (it is also woken by the service's own
    #: writes): how soon a state change or TrainingJobCompleted a worker stored reaches
    #: ``events.training``.
    outbox_poll_s: float = 0.25
    #: Directories a job's ``dataset.path`` may name files under, separated by ``:``
    #: (``os.pathsep``); empty = ``<data_dir>/datasets`` only. Paths are resolved
    #: (symlinks, ``..``) before the check. Env ``AF_TRAINING_DATASET_ROOTS``.
    dataset_roots: str = ""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.heartbeat_interval_s <= 0 or self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("need 0 < heartbeat_interval_s < heartbeat_timeout_s")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.outbox_poll_s <= 0:
            raise ValueError("outbox_poll_s must be > 0")
        if self.reconcile_interval_s <= 0 or self.enqueue_budget_s < 0:
            raise ValueError("need reconcile_interval_s > 0 and enqueue_budget_s >= 0")
        if self.torch_threads < 0:
            raise ValueError("torch_threads must be >= 0")
        if self.database_url and not self.database_url.startswith("sqlite:///"):
            raise ValueError("database_url must be sqlite:///<path> (only SQLite is supported)")

    @property
    def database_path(self) -> Path:
        """File of the SQLite job database."""
        if self.database_url:
            return Path(self.database_url.removeprefix("sqlite:///"))
        return self.data_dir / "jobs.db"

    @property
    def runs_dir(self) -> Path:
        """Directory holding one run directory (checkpoints) per job."""
        return self.data_dir / "runs"

    @property
    def dataset_root_paths(self) -> tuple[Path, ...]:
        """The configured data roots, resolved (see ``dataset_roots``)."""
        roots = [r for r in self.dataset_roots.split(os.pathsep) if r.strip()] or [str(self.data_dir / "datasets")]
        return tuple(Path(r.strip()).resolve() for r in roots)

    def run_dir(self, job_id: str) -> Path:
        return self.runs_dir / job_id

    def threads_per_worker(self) -> int:
        if self.torch_threads:
            return self.torch_threads
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cpus // max(1, self.workers))

    def replace(self, **changes: object) -> TrainingConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainingConfig:
        environ = os.environ if env is None else env
        values = env_overrides(cls, "training", environ, skip=("data_dir", "redis_url"))
        data_root = environ.get("AF_DATA_DIR", "").strip()
        if data_root:
            values["data_dir"] = Path(data_root) / "training"
        if environ.get("REDIS_URL", "").strip():
            values["redis_url"] = environ["REDIS_URL"].strip()
        return cls(**values)
