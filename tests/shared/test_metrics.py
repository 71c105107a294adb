"""The shared domain-metric pieces (services/shared/metrics.py) on a real Valkey."""

from __future__ import annotations

import time

import pytest
import redis
from prometheus_client import CollectorRegistry
from google.protobuf import empty_pb2

from services.shared.bus import BusConfig, EventBus
from services.shared.fanout import Fanout
from services.shared.metrics import BusStreamCollector, SqliteReader
from services.shared.valkey import EmbeddedValkey


def _values(collector: BusStreamCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.name, tuple(s.labels.values())): s.value for f in collector.collect() for s in f.samples}


async def test_bus_collector_reads_publish_consume_lag_pending_and_dead_letters(
        valkey: EmbeddedValkey, stream_prefix: str) -> None:
    stream, quiet = stream_prefix + "events.x", stream_prefix + "events.never"
    collector = BusStreamCollector(valkey.url, produced=[stream, quiet], consumed=[(stream, "g"), (quiet, "g")])
    r = redis.Redis.from_url(valkey.url)
    try:
        assert _values(collector) == {  # nothing published yet: no stream series, no dead letters
            ("agentforge_bus_dead_letters_total", (stream,)): 0, ("agentforge_bus_dead_letter_entries", (stream,)): 0,
            ("agentforge_bus_dead_letters_total", (quiet,)): 0, ("agentforge_bus_dead_letter_entries", (quiet,)): 0}
        async with EventBus(BusConfig(url=valkey.url)) as bus:
            for _ in range(5):
                await bus.publish(stream, empty_pb2.Empty(), subject="s")
            await bus.ensure_group(stream, "g")
        delivered = r.xreadgroup("g", "c", {stream: ">"}, count=3)
        ids = [entry_id for entry_id, _ in delivered[0][1]]
        r.xack(stream, "g", ids[0])
        r.xadd(stream + ":dlq", {"dlq_error": "boom"})
        got = _values(collector)
        assert got[("agentforge_bus_entries_added_total", (stream,))] == 5
        assert got[("agentforge_bus_group_entries_read_total", (stream, "g"))] == 3
        assert got[("agentforge_bus_group_lag", (stream, "g"))] == 2
        assert got[("agentforge_bus_group_pending", (stream, "g"))] == 2
        assert got[("agentforge_bus_dead_letters_total", (stream,))] == 1
        assert got[("agentforge_bus_dead_letter_entries", (stream,))] == 1
        assert ("agentforge_bus_entries_added_total", (quiet,)) not in got
        # Deleting an undelivered entry leaves Redis unable to compute the lag: counted instead.
        r.xdel(stream, r.xrange(stream, count=5)[3][0])
        assert _values(collector)[("agentforge_bus_group_lag", (stream, "g"))] == 1
    finally:
        r.close()
        collector.close()


def test_bus_collector_leaves_its_series_out_when_redis_is_away() -> None:
    collector = BusStreamCollector("redis://127.0.0.1:1/0", produced=["s"], consumed=[("s", "g")], timeout_s=0.5)
    try:
        started = time.monotonic()
        assert _values(collector) == {}
        assert time.monotonic() - started < 5
    finally:
        collector.close()


def test_bus_collector_registers_without_reaching_redis() -> None:
    registry = CollectorRegistry(auto_describe=True)  # describe() must not need Redis
    registry.register(BusStreamCollector("redis://127.0.0.1:1/0", produced=["s"]))


def test_fanouts_of_one_service_share_the_families() -> None:
    registry = CollectorRegistry(auto_describe=True)
    Fanout("health").bind_metrics(registry)
    Fanout("alerts").bind_metrics(registry)  # was: duplicate timeseries error
    assert registry.get_sample_value("agentforge_fanout_watchers", {"fanout": "health"}) == 0
    assert registry.get_sample_value("agentforge_fanout_watchers", {"fanout": "alerts"}) == 0


def test_sqlite_reader_reads_a_snapshot_and_never_writes(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "x.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (v INTEGER)")
    db.execute("INSERT INTO t VALUES (1), (2)")
    reader = SqliteReader(path)
    try:
        assert reader.snapshot(("SELECT COUNT(*) FROM t", ()), ("SELECT MAX(v) FROM t", ())) == [[(2,)], [(2,)]]
        db.execute("BEGIN IMMEDIATE")  # a writer holding the write lock does not stop a reader
        db.execute("INSERT INTO t VALUES (3)")
        assert reader.snapshot(("SELECT COUNT(*) FROM t", ())) == [[(2,)]]
        db.execute("COMMIT")
        with pytest.raises(sqlite3.OperationalError):  # query_only
            reader.snapshot(("INSERT INTO t VALUES (4)", ()))
    finally:
        reader.close()
        db.close()


def test_a_redis_that_accepts_but_never_answers_costs_a_scrape_its_timeout_only() -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept connections, read nothing, answer nothing
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    collector = BusStreamCollector(f"redis://127.0.0.1:{port}/0", produced=["s"], consumed=[("s", "g")],
                                   timeout_s=0.3)
    try:
        started = time.monotonic()
        assert _values(collector) == {}
        assert time.monotonic() - started < 3, "a silent Redis must not hold a scrape"
    finally:
        collector.close()
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
