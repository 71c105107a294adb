"""Get/List answers come from a cache that every committed write empties (ReadCache)."""

from __future__ import annotations

import asyncio

from agentforge.model.v1 import model_pb2
from agentforge.model.v1 import request_response_pb2 as rr
from google.protobuf import field_mask_pb2

from services.model.servicer import ReadCache

from .conftest import Registry, make_model, make_version, upload_all


class _Store:
    generation = 0


async def test_a_hit_needs_the_generation_it_was_read_at() -> None:
    store, loads = _Store(), []
    cache = ReadCache(store)

    async def load() -> model_pb2.Model:
        loads.append(store.generation)
        return model_pb2.Model(name="models/a", display_name=f"gen {store.generation}")

    request = rr.GetModelRequest(name="models/a")
    first = await cache.get("GetModel", request, load)
    assert await cache.get("GetModel", rr.GetModelRequest(name="models/a"), load) is first  # equal request: hit
    assert (await cache.get("GetModel", rr.GetModelRequest(name="models/b"), load)) is not first  # other key
    assert await cache.get("ListModels", request, load) is not first  # other method, same bytes
    store.generation += 1  # a write committed
    assert (await cache.get("GetModel", request, load)).display_name == "gen 1"
    assert loads == [0, 0, 0, 1] and (cache.hits, cache.misses) == (1, 4)


async def test_a_read_that_a_write_overtook_is_not_cached() -> None:
    store = _Store()
    cache = ReadCache(store)
    request = rr.GetModelRequest(name="models/a")

    async def load_during_a_write() -> model_pb2.Model:
        store.generation += 1  # committed while this read ran: its result may be stale
        return model_pb2.Model(name="models/a", display_name="maybe stale")

    async def load() -> model_pb2.Model:
        return model_pb2.Model(name="models/a", display_name="fresh")

    await cache.get("GetModel", request, load_during_a_write)
    assert (await cache.get("GetModel", request, load)).display_name == "fresh"


async def test_the_cache_is_bounded_by_entries_and_bytes() -> None:
    store = _Store()
    cache = ReadCache(store, max_entries=3, max_bytes=10_000)

    async def load_of(n: int) -> model_pb2.Model:
        return model_pb2.Model(name=f"models/m{n}", description="x" * n)

    for i in range(5):
        await cache.get("GetModel", rr.GetModelRequest(name=f"models/m{i}"), lambda i=i: load_of(i))
    assert len(cache._entries) == 3
    for i in range(3):  # three of 1,000 bytes: over max_bytes // 8, never kept
        await cache.get("GetModel", rr.GetModelRequest(name=f"models/big{i}"), lambda: load_of(2000))
    assert cache._bytes <= 10_000 and all(size <= 1250 for _, size in cache._entries.values())


async def test_every_kind_of_write_shows_in_the_next_read(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "rc", display_name="before")
    get = rr.GetModelRequest(name="models/rc")
    assert (await stub.GetModel(get)).display_name == "before"
    assert (await stub.GetModel(get)).display_name == "before"  # from the cache
    model = await stub.GetModel(get)
    await stub.UpdateModel(rr.UpdateModelRequest(
        model=model_pb2.Model(name="models/rc", display_name="after", etag=model.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))
    assert (await stub.GetModel(get)).display_name == "after"

    listing = rr.ListModelVersionsRequest(parent="models/rc")
    assert list((await stub.ListModelVersions(listing)).model_versions) == []
    v = await make_version(stub, "rc")
    assert [x.name for x in (await stub.ListModelVersions(listing)).model_versions] == [v.name]
    await upload_all(stub, v.name, b"weights")
    await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/rc", alias="prod", version="1"))
    (listed,) = (await stub.ListModelVersions(listing)).model_versions
    assert list(listed.aliases) == ["prod"] and listed.artifact.committed_bytes == len(b"weights")
    assert (await stub.GetModel(get)).aliases["prod"] == "1"
    await stub.DeleteModelAlias(rr.DeleteModelAliasRequest(name="models/rc", alias="prod"))
    assert "prod" not in (await stub.GetModel(get)).aliases

    # Reads racing writes: each read after a write's answer sees that write.
    async def bump(i: int) -> None:
        m = await stub.GetModel(get)
        await stub.UpdateModel(rr.UpdateModelRequest(
            model=model_pb2.Model(name="models/rc", description=f"d{i}", etag=m.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"])))
        assert (await stub.GetModel(get)).description == f"d{i}"

    for i in range(5):
        await asyncio.gather(bump(i), *(stub.GetModel(get) for _ in range(10)))
