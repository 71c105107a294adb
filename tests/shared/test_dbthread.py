"""DatabaseThread (services/shared/dbthread.py): calls run off the event loop, in the
order they were submitted, with the caller's contextvars."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from services.shared.dbthread import DatabaseThread

_var: contextvars.ContextVar[str] = contextvars.ContextVar("test_dbthread", default="unset")


async def test_a_blocking_call_leaves_the_loop_running() -> None:
    db = DatabaseThread("test-db")
    released = threading.Event()

    def wait_for_the_loop() -> bool:
        # Only the loop can set the event: on the loop itself this call would hang.
        return released.wait(10)

    async def release() -> None:
        released.set()

    try:
        done = asyncio.ensure_future(db(wait_for_the_loop))
        await release()
        assert await done is True
    finally:
        db.close()


async def test_calls_run_in_submission_order_on_one_thread_with_the_callers_context() -> None:
    db = DatabaseThread("test-db")
    seen: list[tuple[int, str, str]] = []

    def record(i: int) -> int:
        seen.append((i, threading.current_thread().name, _var.get()))
        return i

    async def call(i: int) -> int:
        _var.set(f"caller-{i}")
        return await db(record, i)

    try:
        results = await asyncio.gather(*(call(i) for i in range(50)))
    finally:
        db.close()
    assert results == list(range(50))
    assert [i for i, _, _ in seen] == list(range(50))
    assert len({name for _, name, _ in seen}) == 1 and seen[0][1].startswith("test-db")
    assert [v for _, _, v in seen] == [f"caller-{i}" for i in range(50)]


async def test_the_calls_exception_reaches_the_caller() -> None:
    db = DatabaseThread("test-db")

    def fail() -> None:
        raise LookupError("no such job")

    try:
        with pytest.raises(LookupError, match="no such job"):
            await db(fail)
    finally:
        db.close()
