"""The training store's transactional outbox and the shared relay (services/shared/outbox.py).

Every state change and the TrainingJobCompleted hand-off are written to the outbox in the
transaction that makes the change; the relay publishes them to ``events.training`` in
order with their envelope ids, and keeps them while Redis is away (a real Valkey,
stopped and started again here; the whole-service chaos test is in tests/chaos).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from agentforge.events.v1 import event_pb2
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.shared.bus import BusConfig, Cursor, EventBus
from services.shared.errors import Unavailable, as_domain_error
from services.shared.migrations import schema_version
from services.shared.dbthread import DatabaseThread
from services.shared.outbox import OutboxRelay
from services.shared.valkey import EmbeddedValkey
from services.training.store import CANCELLED, QUEUED, RUNNING, SUCCEEDED, Store

S = job_pb.TrainingJobState


def _outbox(store: Store) -> list[event_pb2.Event]:
    events = []
    for _id, data in store.outbox_pending(1000):
        event = event_pb2.Event()
        event.ParseFromString(data)
        events.append(event)
    return events


def _new_job(store: Store, job_id: str) -> None:
    store.create(job_pb.TrainingJob(spec=job_pb.TrainingJobSpec(max_steps=10)), job_id, request_id="")


def test_every_state_change_and_the_hand_off_are_in_the_outbox_of_their_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    woken: list[int] = []
    store.on_outbox = lambda: woken.append(1)
    assert schema_version(store._db) == 4
    _new_job(store, "a")
    store.transition("a", RUNNING, "started on w1", worker="w1")
    store.put_checkpoint("a", job_pb.Checkpoint(name="trainingJobs/a/checkpoints/s10", step=10, sha256="f" * 64))
    store.transition("a", SUCCEEDED, "completed", worker="w1", completed_step=10)
    events = _outbox(store)
    changes = [(e.subject, e.training_job_event.state_changed.to_state) for e in events
               if e.WhichOneof("payload") == "training_job_event"]
    assert changes == [("trainingJobs/a", QUEUED), ("trainingJobs/a", RUNNING), ("trainingJobs/a", SUCCEEDED)]
    [completed] = [e for e in events if e.WhichOneof("payload") == "training_job_completed"]
    assert completed.type == event_pb2.TrainingJobCompleted.DESCRIPTOR.full_name and completed.source == "training"
    assert completed.training_job_completed.training_job.state == SUCCEEDED
    assert completed.training_job_completed.checkpoint.step == 10
    assert len({e.id for e in events}) == len(events) == 4
    assert len(woken) == 3  # once per committing transaction that added entries

    # An illegal transition rolls back: no entry, no wake-up.
    with pytest.raises(Exception, match="cannot move"):
        store.transition("a", CANCELLED, "too late")
    assert len(_outbox(store)) == 4 and len(woken) == 3
    store.outbox_ack([i for i, _ in store.outbox_pending(2)])
    assert [e.id for e in _outbox(store)] == [e.id for e in events[2:]]
    assert store.outbox_size() == 2
    store.close()


def test_a_store_from_before_the_outbox_migrates_to_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = Store(path)
    _new_job(store, "old")
    store.close()
    db = sqlite3.connect(path, isolation_level=None)  # step 4 undone: a store of the previous build
    db.execute("DROP TABLE outbox")
    db.execute("DELETE FROM schema_version WHERE version=4")
    db.close()
    store = Store(path)
    assert schema_version(store._db) == 4 and store.outbox_size() == 0
    assert store.get("old").state == QUEUED
    store.request_cancel("old")
    assert [e.training_job_event.state_changed.to_state for e in _outbox(store)] == [CANCELLED]
    store.close()


async def _published(bus: EventBus, stream: str) -> list[event_pb2.Event]:
    epoch = await bus.epoch(stream)
    return [item.unpack(event_pb2.Event) for item in await bus.read(stream, Cursor(epoch, "0-0"), count=1000)]


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("store_thread", [False, True], ids=["on-the-loop", "store-thread"])
async def test_the_relay_publishes_in_order_keeps_entries_while_valkey_is_away_then_sends_them(
        tmp_path: Path, valkey_factory: Callable[[], EmbeddedValkey], stream_prefix: str, store_thread: bool) -> None:
    valkey = valkey_factory()
    store = Store(tmp_path / "jobs.db")
    stream = stream_prefix + "events.training"
    db = DatabaseThread("test-outbox") if store_thread else None  # as the training service runs it
    async with EventBus(BusConfig(url=valkey.url, publish_timeout_s=0.5)) as bus:
        registry = CollectorRegistry()
        relay = OutboxRelay("test", pending=store.outbox_pending, ack=store.outbox_ack, bus=bus, stream=stream,
                            poll_s=0.05, publish_budget_s=0.3, max_backoff_s=0.3, size=store.outbox_size,
                            registry=registry, run=db)

        def metric(name: str) -> float | None:
            return registry.get_sample_value(name, {"stream": stream})
        store.on_outbox = relay.notify
        relay.start()
        try:
            _new_job(store, "a")
            _new_job(store, "b")
            await _until(lambda: store.outbox_size() == 0, 10, "the first entries published")
            before = await _published(bus, stream)
            assert [e.subject for e in before] == ["trainingJobs/a", "trainingJobs/b"]

            valkey.kill()
            store.transition("a", RUNNING, "started", worker="w1")
            store.transition("a", SUCCEEDED, "completed", worker="w1", completed_step=10)
            store.request_cancel("b")
            waiting = _outbox(store)
            assert len(waiting) == 4
            await asyncio.sleep(1.0)  # passes fail meanwhile; nothing is lost
            assert [e.id for e in _outbox(store)] == [e.id for e in waiting]
            assert metric("agentforge_outbox_pending_entries") == 4
            with pytest.raises(Exception) as info:
                await relay.drain()
            assert isinstance(as_domain_error(info.value), Unavailable)

            valkey.start()  # same port, empty
            await _until(lambda: store.outbox_size() == 0, 15, "the waiting entries published after the restart")
            after = await _published(bus, stream)
            # In order, each once, with the ids they were written with (consumers dedupe by id).
            assert [e.id for e in after] == [e.id for e in waiting]
            assert [e.WhichOneof("payload") for e in after] == [
                "training_job_event", "training_job_event", "training_job_completed", "training_job_event"]
            assert relay.published == 6 and metric("agentforge_outbox_published_total") == 6
            assert metric("agentforge_outbox_pending_entries") == 0
        finally:
            await relay.aclose()
            if db is not None:
                db.close()
    store.close()
