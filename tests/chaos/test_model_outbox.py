"""The registry's outbox on the shared relay while its Valkey is killed and restarted.

Versions created and aliases moved while Redis is away are committed with their events;
the events wait in the registry's outbox (``agentforge_outbox_pending_entries`` shows
them) and reach ``events.model`` after the restart, in the order they were stored, each
once, with the ids fixed when they were written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc.aio

from agentforge.events.v1 import event_pb2
from agentforge.model.v1 import model_service_pb2_grpc
from services.model.config import ModelConfig
from services.model.events import outbox_pending
from services.model.server import create_server
from services.shared.bus import Cursor
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey
from tests.model.conftest import bus_config, make_model, make_version, upload_all
from tests.support import scrape


async def test_registry_events_stored_while_valkey_is_away_are_published_in_order_once_it_is_back(
        valkey_factory: Callable[[], EmbeddedValkey], tmp_path: Path) -> None:
    valkey = valkey_factory()
    config = ModelConfig(data_dir=tmp_path / "model", events_stream="events.model",
                         training_stream="events.training", outbox_poll_s=0.1, handoff_enabled=False)
    app = await create_server(config, server_config=ServerConfig(grace_seconds=0.5, metrics_port=0,
                                                                 log_format="text", log_level="WARNING"),
                              bus_config=bus_config(valkey.url))
    store = app.registry.store
    pending_key = ("agentforge_outbox_pending_entries", (("stream", "events.model"),))
    published_key = ("agentforge_outbox_published_total", (("stream", "events.model"),))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            await make_model(stub, "before")
            await make_version(stub, "before")
            async with asyncio.timeout(10):  # the relay is running: the first event goes out
                while store.outbox_size():
                    await asyncio.sleep(0.05)

            valkey.kill()
            await make_model(stub, "during")
            for _ in range(3):
                version = await make_version(stub, "during")
                await upload_all(stub, version.name, b"weights")  # aliases name READY versions
            await store.set_alias("during", "production", 2)
            await store.set_alias("during", "production", 3)
            waiting = [event_pb2.Event.FromString(data) for _, data in await store.db(outbox_pending(store), 1000)]
            assert [e.WhichOneof("payload") for e in waiting] == ["model_version_created"] * 3 + ["alias_moved"] * 2
            metrics = await asyncio.to_thread(scrape, app.service.metrics_port)
            assert metrics[pending_key] == 5
            assert metrics[published_key] == 1

            valkey.start()  # same port, empty
            async with asyncio.timeout(30):
                while store.outbox_size():
                    await asyncio.sleep(0.1)
        published = [item.unpack(event_pb2.Event) for item in
                     await app.bus.read("events.model", Cursor(await app.bus.epoch("events.model"), "0-0"),
                                        count=1000)]
        ids = [e.id for e in published]
        assert len(ids) == len(set(ids)), "an entry was published twice"
        assert ids == [e.id for e in waiting]  # in the order they were stored, ids fixed at write
        assert [e.model_version_created.model_version.name for e in published[:3]] == [
            f"models/during/versions/{n}" for n in (1, 2, 3)]
        assert [(e.alias_moved.from_version, e.alias_moved.to_version) for e in published[3:]] == [("", "2"), ("2", "3")]
        metrics = await asyncio.to_thread(scrape, app.service.metrics_port)
        assert (metrics[pending_key], metrics[published_key]) == (0, 6)
    finally:
        await app.close()
