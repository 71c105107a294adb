"""Versions: numbering, idempotency, get by alias/latest, list filters and order, aliases on the bus."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from google.protobuf import field_mask_pb2

from agentforge.events.v1 import event_pb2
from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as rr
from services.shared.bus import Envelope

from .conftest import Registry, details, make_model, make_version, upload_all


async def ready_version(registry: Registry, model_id: str, payload: bytes, **fields: object) -> mv.ModelVersion:
    version = await make_version(registry.stub, model_id, **fields)
    response = await upload_all(registry.stub, version.name, payload)
    assert response.complete
    return response.model_version


async def test_versions_are_numbered_in_order_and_request_id_is_idempotent(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "num")
    req = rr.CreateModelVersionRequest(parent="models/num", model_version=mv.ModelVersion(description="a"),
                                       request_id="same")
    first = await stub.CreateModelVersion(req)
    assert (await stub.CreateModelVersion(req)).name == first.name == "models/num/versions/1"
    second = await make_version(stub, "num")
    assert second.name == "models/num/versions/2"
    assert second.state == mv.MODEL_VERSION_STATE_REGISTERING
    await stub.DeleteModelVersion(rr.DeleteModelVersionRequest(name=second.name))
    assert (await make_version(stub, "num")).name == "models/num/versions/3"  # ids never reused
    model = await stub.GetModel(rr.GetModelRequest(name="models/num"))
    assert (model.latest_version, model.version_count) == ("3", 2)


async def test_list_filters_by_tags_states_alias_and_orders_by_metric(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "lst")
    await ready_version(registry, "lst", b"one", tags=["a"], metrics={"acc": 0.5})
    await ready_version(registry, "lst", b"two", tags=["a", "b"], metrics={"acc": 0.9})
    await make_version(stub, "lst", tags=["b"], metrics={"acc": 0.7})  # REGISTERING
    await make_version(stub, "lst")  # no metric
    await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/lst", alias="production", version="1"))

    async def names(**kw: object) -> list[str]:
        resp = await stub.ListModelVersions(rr.ListModelVersionsRequest(parent="models/lst", **kw))
        return [v.name.rsplit("/", 1)[1] for v in resp.model_versions]

    assert await names() == ["4", "3", "2", "1"]
    assert await names(order_by="create_time asc") == ["1", "2", "3", "4"]
    assert await names(tags=["a", "b"]) == ["2"]
    assert await names(states=[mv.MODEL_VERSION_STATE_READY]) == ["2", "1"]
    assert await names(alias="production") == ["1"]
    assert await names(alias="latest") == ["2"]
    assert await names(order_by="metrics.acc desc") == ["2", "3", "1", "4"]
    assert await names(order_by="metrics.acc asc") == ["1", "3", "2", "4"]
    page1 = await stub.ListModelVersions(rr.ListModelVersionsRequest(parent="models/lst", page_size=3,
                                                                     order_by="metrics.acc desc"))
    page2 = await stub.ListModelVersions(rr.ListModelVersionsRequest(
        parent="models/lst", page_size=3, order_by="metrics.acc desc", page_token=page1.next_page_token))
    assert [v.name[-1] for v in page1.model_versions] + [v.name[-1] for v in page2.model_versions] == list("2314")
    assert page2.next_page_token == ""


async def test_get_by_alias_and_latest_resolves_the_id(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "res")
    await ready_version(registry, "res", b"first")
    await ready_version(registry, "res", b"second")
    await make_version(stub, "res")  # REGISTERING: latest skips it
    await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/res", alias="production", version="1"))
    prod = await stub.GetModelVersion(rr.GetModelVersionRequest(name="models/res/versions/production"))
    latest = await stub.GetModelVersion(rr.GetModelVersionRequest(name="models/res/versions/latest"))
    assert (prod.name, list(prod.aliases)) == ("models/res/versions/1", ["production"])
    assert latest.name == "models/res/versions/2"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModelVersion(rr.GetModelVersionRequest(name="models/res/versions/staging"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_version_mask_metric_key_and_etag(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "uv")
    v = await make_version(stub, "uv", metrics={"acc": 0.1, "loss": 2.0}, parameters={"lr": "1e-3"})
    updated = await stub.UpdateModelVersion(rr.UpdateModelVersionRequest(
        model_version=mv.ModelVersion(name=v.name, metrics={"acc": 0.8}, description="d", etag=v.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["metrics.acc", "description"])))
    assert dict(updated.metrics) == {"acc": 0.8, "loss": 2.0}
    assert updated.description == "d" and dict(updated.parameters) == {"lr": "1e-3"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateModelVersion(rr.UpdateModelVersionRequest(
            model_version=mv.ModelVersion(name=v.name, etag=v.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"])))
    assert err.value.code() == grpc.StatusCode.ABORTED


async def test_alias_moves_publish_alias_moved_events(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "al")
    await ready_version(registry, "al", b"v1")
    await ready_version(registry, "al", b"v2")
    not_ready = await make_version(stub, "al")
    model = await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/al", alias="production", version="1"))
    assert dict(model.aliases) == {"production": "1"}
    with pytest.raises(grpc.aio.AioRpcError) as err:  # stale etag: compare-and-swap fails
        await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/al", alias="production", version="2",
                                                         etag="stale"))
    assert err.value.code() == grpc.StatusCode.ABORTED
    model = await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/al", alias="production", version="2",
                                                             etag=model.etag))
    assert dict(model.aliases) == {"production": "2"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/al", alias="production",
                                                         version=not_ready.name.rsplit("/", 1)[1]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    model = await stub.DeleteModelAlias(rr.DeleteModelAliasRequest(name="models/al", alias="production"))
    assert dict(model.aliases) == {}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteModelAlias(rr.DeleteModelAliasRequest(name="models/al", alias="production"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    moves: list[tuple[str, str, str]] = []
    created: list[str] = []
    async with asyncio.timeout(10):
        async for item in registry.bus.follow(registry.events_stream):
            assert isinstance(item, Envelope)
            event = item.unpack(event_pb2.Event)
            assert event.source == "model" and event.id == item.id
            if event.HasField("alias_moved"):
                a = event.alias_moved
                assert (a.model, a.alias) == ("models/al", "production")
                moves.append((a.from_version, a.to_version, event.type))
            else:
                created.append(event.model_version_created.model_version.name)
            if len(moves) == 3:
                break
    assert [m[:2] for m in moves] == [("", "1"), ("1", "2"), ("2", "")]
    assert moves[0][2] == "agentforge.events.v1.AliasMoved"
    assert created == ["models/al/versions/1", "models/al/versions/2", "models/al/versions/3"]


async def test_delete_version_with_alias_needs_force(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "dv")
    v = await ready_version(registry, "dv", b"x")
    await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/dv", alias="prod", version="1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteModelVersion(rr.DeleteModelVersionRequest(name=v.name))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(err.value)[0].reason == "VERSION_HAS_ALIASES"
    await stub.DeleteModelVersion(rr.DeleteModelVersionRequest(name=v.name, force=True))
    model = await stub.GetModel(rr.GetModelRequest(name="models/dv"))
    assert dict(model.aliases) == {} and model.version_count == 0
