"""The training service's domain metrics, computed on scrape (docs/metrics.md).

Workers are ``spawn``ed processes; they do not export metrics of their own. Everything
they report already lands in the job database (state changes; each job's latest
``TrainingProgress`` with the worker's recent steps/s, examples/s and loss) and in Redis
(queue entries), so the service reads those on scrape: no multiprocess registry, no
per-step cost, and a job's series exist exactly while it is RUNNING (the collector
emits only the jobs it finds running, so a finished job's series vanish with it).

:class:`JobsCollector` (database + worker pool) and :class:`QueueCollector` (Redis) are
separate so that Redis being away leaves the job and worker series in the scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agentforge.training.v1 import training_job_pb2 as job_pb
from prometheus_client.core import GaugeMetricFamily, Metric
from redis import exceptions as redis_errors

from services.shared.metrics import SCRAPE_TIMEOUT_S, ScrapeCollector, SqliteReader, count_after, scrape_redis
from services.training.queue import GROUP, PRIORITY_NAMES, Keys, entry_key

__all__ = ["JobsCollector", "QueueCollector", "STATE_LABELS"]

S = job_pb.TrainingJobState
#: ``state`` label values: the enum names without their prefix, lower case.
STATE_LABELS: dict[int, str] = {
    v.number: v.name.removeprefix("TRAINING_JOB_STATE_").lower()
    for v in S.DESCRIPTOR.values if v.number != S.TRAINING_JOB_STATE_UNSPECIFIED
}


class JobsCollector(ScrapeCollector):
    """Jobs by state, workers busy/idle, and the progress of every RUNNING job.

    Reads the job database on a read-only connection of its own (:class:`SqliteReader`).

    Args:
        database: the job database (``TrainingConfig.database_path``).
        worker_pids: the PIDs of the pool's live worker processes.
        pid_of: the PID in a worker name (``worker-<index>-<pid>``), or None.
    """

    name = "training_jobs"

    def __init__(self, database: Path, worker_pids: Callable[[], set[int]],
                 pid_of: Callable[[str], int | None], *, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        super().__init__()
        self.database = Path(database)
        self._worker_pids = worker_pids
        self._pid_of = pid_of
        self._db = SqliteReader(database, timeout_s)

    def close(self) -> None:
        self._db.close()

    def families(self) -> list[Metric]:
        job = ("training_job",)
        return [
            GaugeMetricFamily("agentforge_training_jobs", "Training jobs in the database, by state.",
                              labels=("state",)),
            GaugeMetricFamily("agentforge_training_workers",
                              "Live worker processes of this service: busy (running a job) or idle.",
                              labels=("state",)),
            GaugeMetricFamily("agentforge_training_job_step", "Optimizer steps a RUNNING job has completed.",
                              labels=job),
            GaugeMetricFamily("agentforge_training_job_steps_per_second",
                              "A RUNNING job's optimizer steps per second (worker's recent average).", labels=job),
            GaugeMetricFamily("agentforge_training_job_examples_per_second",
                              "A RUNNING job's training examples per second (worker's recent average).",
                              labels=job),
            GaugeMetricFamily("agentforge_training_job_loss",
                              "A RUNNING job's training loss at its last reported step (NaN once diverged).",
                              labels=job),
            GaugeMetricFamily("agentforge_training_job_last_update_timestamp_seconds",
                              "Unix time a RUNNING job's worker last recorded something (progress, "
                              "evaluation, checkpoint); time() minus it is how long the job has been silent.",
                              labels=job),
        ]

    def _rows(self) -> tuple[list[tuple[int, int]], list[bytes]]:
        counts, running = self._db.snapshot(
            ("SELECT state, COUNT(*) FROM jobs GROUP BY state", ()),
            ("SELECT job FROM jobs WHERE state=?", (S.TRAINING_JOB_STATE_RUNNING,)),
        )
        return counts, [r[0] for r in running]

    def fill(self, families: dict[str, Metric]) -> None:
        live = self._worker_pids()
        counts, running = self._rows()
        by_state = dict(counts)
        for number, label in STATE_LABELS.items():
            families["agentforge_training_jobs"].add_metric([label], float(by_state.get(number, 0)))
        busy = 0
        for data in running:
            job = job_pb.TrainingJob.FromString(data)
            if self._pid_of(job.worker) in live:
                busy += 1
            p = job.progress
            families["agentforge_training_job_step"].add_metric([job.name], float(p.step))
            families["agentforge_training_job_steps_per_second"].add_metric([job.name], p.steps_per_second)
            families["agentforge_training_job_examples_per_second"].add_metric([job.name], p.examples_per_second)
            families["agentforge_training_job_loss"].add_metric([job.name], p.train_loss)
            families["agentforge_training_job_last_update_timestamp_seconds"].add_metric(
                [job.name], job.update_time.ToNanoseconds() / 1e9)
        busy = min(busy, len(live))
        families["agentforge_training_workers"].add_metric(["busy"], float(busy))
        families["agentforge_training_workers"].add_metric(["idle"], float(len(live) - busy))


class QueueCollector(ScrapeCollector):
    """Depth and oldest entry age of each priority's queue stream (Redis, on scrape).

    An entry waits for a worker when the group ``workers`` has not delivered it yet
    (XINFO GROUPS ``lag``) or when it is pending but claimable: released after a failed
    attempt, or its worker stopped touching it (idle ≥ ``claim_idle_ms``, XPENDING IDLE).
    The oldest entry's age is now minus its id's timestamp (the time it was enqueued);
    0 when nothing waits. Superseded duplicate entries (a job re-enqueued) count until a
    worker drops them.
    """

    name = "training_queue"

    def __init__(self, url: str, keys: Keys, *, claim_idle_ms: int, timeout_s: float = SCRAPE_TIMEOUT_S,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.keys = keys
        self.claim_idle_ms = claim_idle_ms
        self._clock = clock
        self._redis = scrape_redis(url, timeout_s)

    def close(self) -> None:
        self._redis.close()

    def families(self) -> list[Metric]:
        return [
            GaugeMetricFamily("agentforge_training_queue_depth",
                              "Queue entries waiting for a worker (not delivered yet, or claimable).",
                              labels=("priority",)),
            GaugeMetricFamily("agentforge_training_queue_oldest_entry_age_seconds",
                              "Seconds since the oldest waiting queue entry was enqueued (0 when none waits).",
                              labels=("priority",)),
        ]

    def fill(self, families: dict[str, Metric]) -> None:
        streams = [(name, self.keys.queue(priority)) for priority, name in PRIORITY_NAMES.items()]
        pipe = self._redis.pipeline(transaction=False)
        for _, stream in streams:
            pipe.xinfo_groups(stream)
            pipe.xpending_range(stream, GROUP, min="-", max="+", count=1000, idle=self.claim_idle_ms)
        replies = pipe.execute(raise_on_error=False)
        now_ms = self._clock() * 1000
        for i, (priority, stream) in enumerate(streams):
            groups, claimable = replies[2 * i], replies[2 * i + 1]
            for reply in (groups, claimable):
                if isinstance(reply, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
                    raise reply
            group = None if isinstance(groups, BaseException) else next(
                (g for g in groups if _text(g["name"]) == GROUP), None)
            # No group yet (or Redis forgot it): the next claim creates it from the start.
            delivered = "0-0" if group is None else _text(group["last-delivered-id"])
            if group is not None and group.get("lag") is not None:
                waiting = int(group["lag"])
            else:
                waiting = count_after(self._redis, stream, delivered)
            first = self._redis.xrange(stream, min=f"({delivered}", count=1) if waiting else []
            ids = [_text(first[0][0])] if first else []
            pending = [] if isinstance(claimable, BaseException) else claimable
            ids += [_text(p["message_id"]) for p in pending]
            oldest = min((entry_key(entry)[0] for entry in ids), default=None)
            families["agentforge_training_queue_depth"].add_metric([priority], float(waiting + len(pending)))
            families["agentforge_training_queue_oldest_entry_age_seconds"].add_metric(
                [priority], 0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
