"""The worker pool: N ``spawn``ed worker processes, restarted when one dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal

from services.training.config import TrainingConfig
from services.training.worker import worker_main

__all__ = ["WorkerPool"]

_log = logging.getLogger("services.training.pool")


class WorkerPool:
    """Starts ``config.workers`` processes; :meth:`supervise` replaces dead ones."""

    def __init__(self, config: TrainingConfig, *, log_format: str = "json", log_level: str = "INFO") -> None:
        self.config = config
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self._log_args = (log_format, log_level)
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(target=worker_main, args=(self.config, index, *self._log_args),
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

    async def supervise(self, interval_s: float = 0.5) -> None:
        while not self._stopping:
            await asyncio.sleep(interval_s)
            for index, proc in list(self._procs.items()):
                if not self._stopping and not proc.is_alive():
                    _log.warning("worker process died; restarting",
                                 extra={"index": index, "pid": proc.pid, "exitcode": proc.exitcode})
                    proc.close()
                    self._spawn(index)

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
