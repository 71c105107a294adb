"""Stopping background tasks without hanging a shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["cancel_and_wait"]

_log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[object]], *, timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them to end, at most ``timeout`` seconds.

    A task still running after that is cancelled once more and left behind with a
    warning: redis-py can swallow a cancellation that lands inside a command, and a
    shutdown must not wait forever on such a task.
    """
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    _done, stuck = await asyncio.wait(pending, timeout=timeout)
    for task in stuck:
        task.cancel()
        _log.warning("task did not stop within %.1fs of cancellation: %r", timeout, task)
