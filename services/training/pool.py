"""The worker pool: N ``spawn``ed worker processes, restarted when one dies.

A dead worker is restarted after a growing delay; a worker slot that crashes more than
the burst within the window makes the pool give up (:attr:`WorkerPool.failure`), and the
training service then stops and exits 1, for the launcher to restart it whole. The
policy is :class:`services.shared.supervision.RestartPolicy`, read from
``AF_TRAINING_WORKER_RESTART_BURST``, ``..._INTERVAL_S``, ``..._DELAY_S``,
``..._MAX_DELAY_S`` (defaults: 5 restarts within 60 s, 0.5 s doubling up to 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable

from services.shared.supervision import RestartBudget, RestartPolicy
from services.training.config import TrainingConfig
from services.training.worker import worker_main

__all__ = ["WorkerPool"]

_log = logging.getLogger("services.training.pool")


class WorkerPool:
    """Starts ``config.workers`` processes; :meth:`supervise` replaces dead ones."""

    def __init__(self, config: TrainingConfig, *, log_format: str = "json", log_level: str = "INFO",
                 restart: RestartPolicy | None = None,
                 target: Callable[[TrainingConfig, int, str, str], None] = worker_main) -> None:
        self.config = config
        self._target = target
        self.restart = restart or RestartPolicy.from_env("training_worker_restart")
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self._budgets: dict[int, RestartBudget] = {}
        self._restart_at: dict[int, float] = {}
        self._log_args = (log_format, log_level)
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        #: Why the pool gave up restarting (None while it has not); set with :attr:`failed`.
        self.failure: str | None = None
        self.failed = asyncio.Event()

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(target=self._target, args=(self.config, index, *self._log_args),
                                 name=f"training-worker-{index}", daemon=False)
        proc.start()
        self._procs[index] = proc
        _log.info("worker process started", extra={"index": index, "pid": proc.pid})

    def start(self) -> None:
        for index in range(self.config.workers):
            self._spawn(index)
        with contextlib.suppress(RuntimeError):
            self._supervisor = asyncio.get_running_loop().create_task(self.supervise())

    @property
    def processes(self) -> dict[int, multiprocessing.process.BaseProcess]:
        return dict(self._procs)

    def pid_of(self, worker_name: str) -> int | None:
        """PID of a worker named ``worker-<index>-<pid>``."""
        tail = worker_name.rpartition("-")[2]
        return int(tail) if tail.isdigit() else None

    async def supervise(self, interval_s: float = 0.1) -> None:
        """Restart dead workers after their backoff; give up on a crash loop."""
        while not self._stopping and self.failure is None:
            await asyncio.sleep(interval_s)
            for index, at in list(self._restart_at.items()):
                if not self._stopping and time.monotonic() >= at:
                    del self._restart_at[index]
                    self._spawn(index)
            for index, proc in list(self._procs.items()):
                if self._stopping or self.failure is not None:
                    break
                if proc.is_alive():
                    continue
                budget = self._budgets.setdefault(index, RestartBudget(self.restart))
                delay = budget.crashed()
                if delay is None:
                    self.failure = (f"worker {index} died (exit code {proc.exitcode}) too often: "
                                    f"{budget.describe()}; giving up (AF_TRAINING_WORKER_RESTART_*)")
                    _log.error(self.failure, extra={"index": index, "pid": proc.pid})
                    self.failed.set()
                    break
                _log.warning("worker process died; restarting",
                             extra={"index": index, "pid": proc.pid, "exitcode": proc.exitcode,
                                    "delay_s": delay, "recent_crashes": budget.recent})
                del self._procs[index]  # (stop() must not meet a closed process)
                proc.close()
                self._restart_at[index] = time.monotonic() + delay

    async def aclose(self, timeout_s: float = 15.0) -> None:
        """Stop supervising, then :meth:`stop` the workers without blocking the loop."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self.stop, timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every worker (each checkpoints and requeues its job), then SIGKILL stragglers."""
        self._stopping = True
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self._procs.values():
            proc.join(timeout_s)
            if proc.is_alive():
                _log.warning("worker did not stop; killing", extra={"pid": proc.pid})
                proc.kill()
                proc.join(5)
        self._procs.clear()
        self._restart_at.clear()
