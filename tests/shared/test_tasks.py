"""cancel_and_wait: a shutdown never hangs on a task that swallows its cancellation."""

from __future__ import annotations

import asyncio
import time

from services.shared.tasks import cancel_and_wait


async def test_cancelled_tasks_are_awaited():
    task = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait([task], timeout=1.0)
    assert task.cancelled()


async def test_a_task_that_swallows_cancellation_does_not_hang_the_caller():
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue  # what a swallowed cancellation looks like

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await cancel_and_wait([task], timeout=0.2)
    assert time.monotonic() - started < 1.0
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
