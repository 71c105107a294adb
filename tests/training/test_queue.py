"""The job queue after Redis forgets (issue 7): regressions at the queue's own level.

Workers logged NOGROUP twice a second forever after Valkey restarted, because the queue
created its groups once. Here a real private Valkey is killed and started empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from agentforge.training.v1 import training_job_pb2 as job_pb

from redis import exceptions as redis_errors

from services.shared.bus import BusConfig, EventBus
from services.shared.valkey import EmbeddedValkey
from services.training.queue import GROUP, JobQueue, Keys

NORMAL = job_pb.PRIORITY_NORMAL


async def restart_empty(server: EmbeddedValkey, q: JobQueue) -> None:
    """kill -9 and start on the same port; then drop the client's dead connections (the
    first command on each fails, as it would in a worker, which retries next beat)."""
    server.kill()
    server.start()
    for _ in range(5):
        try:
            await q.bus.client.ping()
            return
        except redis_errors.ConnectionError:
            continue


@pytest.fixture
async def queue(valkey_factory: Callable[[], EmbeddedValkey]) -> AsyncIterator[tuple[EmbeddedValkey, JobQueue]]:
    server = valkey_factory()
    bus = EventBus(BusConfig(url=server.url, publish_timeout_s=2.0))
    try:
        yield server, JobQueue(bus, Keys("q:"), claim_idle_ms=60_000)
    finally:
        await bus.aclose()


async def test_claim_after_valkey_restarted_empty_recreates_the_group(queue: tuple[EmbeddedValkey, JobQueue]) -> None:
    server, q = queue
    await q.enqueue("trainingJobs/a", NORMAL, 1)
    assert (await q.claim("w1")).job_id == "a"  # groups created, entry delivered
    await restart_empty(server, q)  # streams and groups are gone
    cursor = await q.enqueue("trainingJobs/b", NORMAL, 1)  # XADD recreates the stream, not the group
    claim = await q.claim("w1")  # was: NOGROUP on every poll, forever
    assert claim is not None and claim.job_id == "b" and claim.entry_id == cursor.entry_id
    assert await q.claim("w1") is None


async def test_touch_release_and_ack_of_an_entry_whose_group_is_gone(queue: tuple[EmbeddedValkey, JobQueue]) -> None:
    server, q = queue
    await q.enqueue("trainingJobs/a", NORMAL, 1)
    claim = await q.claim("w1")
    assert claim is not None and await q.touch(claim, "w1")
    await restart_empty(server, q)
    assert await q.touch(claim, "w1") is False  # not held any more: the worker asks the database
    assert await q.release(claim, "w1") is False  # the caller enqueues a new entry instead
    await q.ack(claim)  # nothing to ack: no error either


async def test_entry_state_follows_the_entry(queue: tuple[EmbeddedValkey, JobQueue]) -> None:
    server, q = queue
    await q.ensure_groups()
    first = await q.enqueue("trainingJobs/a", NORMAL, 1)
    second = await q.enqueue("trainingJobs/b", NORMAL, 1)
    assert await q.entry_state(NORMAL, first.entry_id) == "waiting"
    claim = await q.claim("w1")
    assert claim is not None and claim.entry_id == first.entry_id
    assert await q.entry_state(NORMAL, first.entry_id) == "pending"
    assert await q.entry_state(NORMAL, second.entry_id) == "waiting"
    await q.ack(claim)
    assert await q.entry_state(NORMAL, first.entry_id) == "gone"
    assert await q.bus.client.xdel(q.queue_stream(NORMAL), second.entry_id) == 1  # an operator deletes it
    assert await q.entry_state(NORMAL, second.entry_id) == "gone"
    assert await q.entry_state(NORMAL, "") == "gone"
    await restart_empty(server, q)
    assert await q.entry_state(NORMAL, first.entry_id) == "gone"
    assert GROUP == "workers"
