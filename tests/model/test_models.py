"""Models: create (idempotent), get, list with paging and filters, update, delete."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import field_mask_pb2

from agentforge.model.v1 import model_pb2, model_version_pb2
from agentforge.model.v1 import request_response_pb2 as rr

from .conftest import Registry, details, make_model, make_version


async def test_create_get_and_retry_with_request_id_returns_the_first_model(registry: Registry) -> None:
    stub = registry.stub
    req = rr.CreateModelRequest(model_id="cognate", request_id="req-1",
                                model=model_pb2.Model(display_name="Cognate", labels={"team": "forge"}, tags=["a"]))
    first = await stub.CreateModel(req)
    again = await stub.CreateModel(req)
    assert first.name == "models/cognate" and again == first
    got = await stub.GetModel(rr.GetModelRequest(name="models/cognate"))
    assert (got.display_name, dict(got.labels), list(got.tags)) == ("Cognate", {"team": "forge"}, ["a"])
    assert got.etag and got.request_id == "req-1" and got.create_time.seconds > 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateModel(rr.CreateModelRequest(model_id="cognate", model=model_pb2.Model()))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_generated_id_when_model_id_is_empty(registry: Registry) -> None:
    model = await registry.stub.CreateModel(rr.CreateModelRequest(model=model_pb2.Model()))
    assert model.name.startswith("models/m-")
    assert (await registry.stub.GetModel(rr.GetModelRequest(name=model.name))).name == model.name


async def test_list_pages_newest_first_and_filters_by_tags_and_labels(registry: Registry) -> None:
    stub = registry.stub
    for i in range(7):
        await make_model(stub, f"m{i}", tags=["even"] if i % 2 == 0 else ["odd"],
                         labels={"size": "big" if i < 3 else "small", "idx": str(i)})
    seen, token = [], ""
    while True:
        page = await stub.ListModels(rr.ListModelsRequest(page_size=3, page_token=token))
        assert len(page.models) <= 3
        seen += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"models/m{i}" for i in reversed(range(7))]
    even = await stub.ListModels(rr.ListModelsRequest(tags=["even"]))
    assert [m.name for m in even.models] == ["models/m6", "models/m4", "models/m2", "models/m0"]
    both = await stub.ListModels(rr.ListModelsRequest(tags=["even"], label_selector="size=big"))
    assert [m.name for m in both.models] == ["models/m2", "models/m0"]
    one = await stub.ListModels(rr.ListModelsRequest(label_selector="size=small,idx=5"))
    assert [m.name for m in one.models] == ["models/m5"]


async def test_page_token_of_another_query_is_invalid_argument(registry: Registry) -> None:
    for i in range(3):
        await make_model(registry.stub, f"p{i}", tags=["x"])
    page = await registry.stub.ListModels(rr.ListModelsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.stub.ListModels(rr.ListModelsRequest(page_size=1, tags=["x"], page_token=page.next_page_token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err.value)[1][0][0] == "page_token"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.stub.ListModels(rr.ListModelsRequest(page_token="garbage!"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_update_applies_only_the_mask_and_checks_the_etag(registry: Registry) -> None:
    stub = registry.stub
    model = await make_model(stub, "upd", display_name="old", description="keep", tags=["t1"])
    updated = await stub.UpdateModel(rr.UpdateModelRequest(
        model=model_pb2.Model(name="models/upd", display_name="new", description="ignored", tags=["t2", "t3"],
                              etag=model.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name", "tags"])))
    assert (updated.display_name, updated.description, list(updated.tags)) == ("new", "keep", ["t2", "t3"])
    assert updated.etag != model.etag
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateModel(rr.UpdateModelRequest(
            model=model_pb2.Model(name="models/upd", display_name="stale", etag=model.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert details(err.value)[0].reason == "ETAG_MISMATCH"


async def test_delete_needs_force_when_versions_exist(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "del")
    await make_version(stub, "del")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteModel(rr.DeleteModelRequest(name="models/del"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stub.DeleteModel(rr.DeleteModelRequest(name="models/del", force=True))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModel(rr.GetModelRequest(name="models/del"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (registry.config.artifacts_dir / "del").exists()


async def test_request_id_reused_with_a_different_body_is_rejected(registry: Registry) -> None:
    """Issue 8: the same request_id with another body must not silently return the first."""
    await registry.stub.CreateModel(rr.CreateModelRequest(model_id="reuse", request_id="k-1",
                                                          model=model_pb2.Model()))
    for request in (rr.CreateModelRequest(model_id="other", request_id="k-1", model=model_pb2.Model()),
                    rr.CreateModelRequest(model_id="reuse", request_id="k-1",
                                          model=model_pb2.Model(description="changed"))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry.stub.CreateModel(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err.value)[0].reason == "REQUEST_ID_REUSED"
    def version_request(**fields: object) -> rr.CreateModelVersionRequest:
        return rr.CreateModelVersionRequest(parent="models/reuse", request_id="v-1",
                                            model_version=model_version_pb2.ModelVersion(**fields))

    version = await registry.stub.CreateModelVersion(version_request())
    assert (await registry.stub.CreateModelVersion(version_request())).name == version.name
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.stub.CreateModelVersion(version_request(description="different"))
    assert details(err.value)[0].reason == "REQUEST_ID_REUSED"
