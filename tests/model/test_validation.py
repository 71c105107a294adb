"""Bad input → INVALID_ARGUMENT with field violations; missing resources → NOT_FOUND. Every RPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import field_mask_pb2

from agentforge.model.v1 import model_pb2
from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as rr

from .conftest import Registry, chunk, details, header, make_model

SHA = "a" * 64


async def _unary(stub: Any, method: str, request: Any) -> Any:
    return await getattr(stub, method)(request)


async def _download(stub: Any, request: Any) -> None:
    async for _ in stub.DownloadModelArtifact(request):
        pass


async def _upload(stub: Any, messages: list[Any]) -> Any:
    return await stub.UploadModelArtifact(iter(messages))


BAD: list[tuple[str, Callable[[Any], Awaitable[Any]], str]] = [
    ("CreateModel", lambda s: _unary(s, "CreateModel", rr.CreateModelRequest(
        model_id="Bad_Id", model=model_pb2.Model())), "model_id"),
    ("CreateModel", lambda s: _unary(s, "CreateModel", rr.CreateModelRequest(model_id="ok")), "model"),
    ("GetModel", lambda s: _unary(s, "GetModel", rr.GetModelRequest(name="cognate")), "name"),
    ("ListModels", lambda s: _unary(s, "ListModels", rr.ListModelsRequest(page_size=5000)), "page_size"),
    ("ListModels", lambda s: _unary(s, "ListModels", rr.ListModelsRequest(label_selector="no equals")),
     "label_selector"),
    ("UpdateModel", lambda s: _unary(s, "UpdateModel", rr.UpdateModelRequest(
        model=model_pb2.Model(name="models/x"), update_mask=field_mask_pb2.FieldMask(paths=["etag"]))),
     "update_mask"),
    ("DeleteModel", lambda s: _unary(s, "DeleteModel", rr.DeleteModelRequest(name="")), "name"),
    ("CreateModelVersion", lambda s: _unary(s, "CreateModelVersion", rr.CreateModelVersionRequest(
        parent="models/x", model_version=mv.ModelVersion(metrics={"acc": float("nan")}))), "model_version.metrics"),
    ("GetModelVersion", lambda s: _unary(s, "GetModelVersion", rr.GetModelVersionRequest(
        name="models/x/versions/0")), "name"),
    ("ListModelVersions", lambda s: _unary(s, "ListModelVersions", rr.ListModelVersionsRequest(
        parent="models/x", order_by="name sideways")), "order_by"),
    ("UpdateModelVersion", lambda s: _unary(s, "UpdateModelVersion", rr.UpdateModelVersionRequest(
        model_version=mv.ModelVersion(name="models/x/versions/prod"),
        update_mask=field_mask_pb2.FieldMask(paths=["tags"]))), "model_version"),
    ("DeleteModelVersion", lambda s: _unary(s, "DeleteModelVersion", rr.DeleteModelVersionRequest(
        name="models/x/versions/latest")), "name"),
    ("SetModelAlias", lambda s: _unary(s, "SetModelAlias", rr.SetModelAliasRequest(
        name="models/x", alias="latest", version="1")), "alias"),
    ("DeleteModelAlias", lambda s: _unary(s, "DeleteModelAlias", rr.DeleteModelAliasRequest(
        name="models/x", alias="9bad")), "alias"),
    ("UploadModelArtifact", lambda s: _upload(s, [rr.UploadModelArtifactRequest(header=rr.UploadHeader(
        name="models/x/versions/1", size_bytes=0, sha256="XYZ", format=mv.ARTIFACT_FORMAT_STATE_DICT))]),
     "header.size_bytes"),
    ("UploadModelArtifact", lambda s: _upload(s, [chunk(0, b"data")]), "header"),
    ("UploadModelArtifact", lambda s: _upload(s, [rr.UploadModelArtifactRequest()]), "kind"),
    ("DownloadModelArtifact", lambda s: _download(s, rr.DownloadModelArtifactRequest(
        name="models/x/versions/1", chunk_size=100)), "chunk_size"),
    ("ExportModelVersion", lambda s: _unary(s, "ExportModelVersion", rr.ExportModelVersionRequest(
        name="models/x/versions/1")), "format"),
    ("GetModelExport", lambda s: _unary(s, "GetModelExport", rr.GetModelExportRequest(
        name="models/x/versions/1/exports/ONNX")), "name"),
    ("ListModelExports", lambda s: _unary(s, "ListModelExports", rr.ListModelExportsRequest(
        parent="models/x/versions/1", page_size=-1)), "page_size"),
]


@pytest.mark.parametrize(("method", "call", "field"), BAD, ids=[f"{m}-{f}" for m, _, f in BAD])
async def test_bad_input_is_invalid_argument_with_field_violations(
        registry: Registry, method: str, call: Callable[[Any], Awaitable[Any]], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(registry.stub)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    _, violations = details(err.value)
    assert violations, "BadRequest field violations expected"
    assert any(f == field or f.startswith(field + ".") or f.startswith(field + "[") for f, _ in violations), violations


MISSING: list[tuple[str, Callable[[Any], Awaitable[Any]]]] = [
    ("GetModel", lambda s: _unary(s, "GetModel", rr.GetModelRequest(name="models/nope"))),
    ("UpdateModel", lambda s: _unary(s, "UpdateModel", rr.UpdateModelRequest(
        model=model_pb2.Model(name="models/nope"), update_mask=field_mask_pb2.FieldMask(paths=["tags"])))),
    ("DeleteModel", lambda s: _unary(s, "DeleteModel", rr.DeleteModelRequest(name="models/nope"))),
    ("CreateModelVersion", lambda s: _unary(s, "CreateModelVersion", rr.CreateModelVersionRequest(
        parent="models/nope", model_version=mv.ModelVersion()))),
    ("ListModelVersions", lambda s: _unary(s, "ListModelVersions", rr.ListModelVersionsRequest(parent="models/nope"))),
    ("GetModelVersion", lambda s: _unary(s, "GetModelVersion", rr.GetModelVersionRequest(
        name="models/here/versions/7"))),
    ("UpdateModelVersion", lambda s: _unary(s, "UpdateModelVersion", rr.UpdateModelVersionRequest(
        model_version=mv.ModelVersion(name="models/here/versions/7"),
        update_mask=field_mask_pb2.FieldMask(paths=["tags"])))),
    ("DeleteModelVersion", lambda s: _unary(s, "DeleteModelVersion", rr.DeleteModelVersionRequest(
        name="models/here/versions/7"))),
    ("SetModelAlias", lambda s: _unary(s, "SetModelAlias", rr.SetModelAliasRequest(
        name="models/here", alias="prod", version="7"))),
    ("DeleteModelAlias", lambda s: _unary(s, "DeleteModelAlias", rr.DeleteModelAliasRequest(
        name="models/here", alias="prod"))),
    ("UploadModelArtifact", lambda s: _upload(s, [header("models/here/versions/7", b"abc")])),
    ("DownloadModelArtifact", lambda s: _download(s, rr.DownloadModelArtifactRequest(
        name="models/here/versions/latest"))),
    ("ExportModelVersion", lambda s: _unary(s, "ExportModelVersion", rr.ExportModelVersionRequest(
        name="models/here/versions/7", format=mv.ARTIFACT_FORMAT_STATE_DICT))),
    ("GetModelExport", lambda s: _unary(s, "GetModelExport", rr.GetModelExportRequest(
        name="models/here/versions/7/exports/onnx"))),
    ("ListModelExports", lambda s: _unary(s, "ListModelExports", rr.ListModelExportsRequest(
        parent="models/here/versions/7"))),
]


@pytest.mark.parametrize(("method", "call"), MISSING, ids=[m for m, _ in MISSING])
async def test_missing_resources_are_not_found(
        registry: Registry, method: str, call: Callable[[Any], Awaitable[Any]]) -> None:
    await make_model(registry.stub, "here")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(registry.stub)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    info, _ = details(err.value)
    assert info.reason.endswith("NOT_FOUND") and info.domain == "agentforge.dev"
