"""A store's own thread: blocking database calls off the event loop, in order.

SQLite calls block: a commit waits for the disk, a statement waits up to the busy
timeout for another process's write lock. Run on the event loop, each one stalls every
call, stream and heartbeat of the process (``agentforge_event_loop_lag_seconds`` shows
it). :class:`DatabaseThread` runs them on one thread per store instead
(``await db(store.transition, job_id, ...)``):

* **order**: one thread, so calls run in the order they were submitted — what one
  coroutine does in sequence still happens in sequence, as it did on the loop;
* **transactions**: each call is one of the store's own transactions, run whole on
  that thread (the store's lock still guards its connection);
* **context**: the call runs in a copy of the caller's contextvars (request id, trace);
* **cancellation**: a caller cancelled while its call runs gets ``CancelledError`` at
  once; the call itself runs to its end (a transaction is never cut in half).

``asyncio.to_thread`` would use the loop's shared pool, whose threads may run two calls
of one store at once and in any order; one thread per store keeps the order above.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["DatabaseThread"]

P = ParamSpec("P")
T = TypeVar("T")


class DatabaseThread:
    """Runs blocking calls of one store on one thread, in submission order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the store's thread; its result or exception."""
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def close(self) -> None:
        """Wait for the calls already submitted, then stop the thread."""
        self._executor.shutdown(wait=True)
