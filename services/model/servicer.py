"""``agentforge.model.v1.ModelService``: proto ↔ domain, nothing else.

Request validation (buf.validate rules) runs in the shared ValidationInterceptor before
a handler sees a message; errors raised here are ``ForgeError``s mapped by the shared
ErrorInterceptor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc.aio
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from agentforge.model.v1 import (
    model_export_pb2,
    model_pb2,
    model_service_pb2_grpc,
    model_version_pb2,
    request_response_pb2 as rr,
)
from services.model import convert
from services.model.domain import ModelRegistry, UploadHeader
from services.shared.errors import InvalidArgument, NotFound

__all__ = ["ModelServicer"]

T = TypeVar("T")

#: Largest response message we send unasked: gRPC's default receive limit (grpcurl, a
#: default Python or Go channel), 4 MiB, counting the whole message, not only `data`.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def _fit(head: rr.DownloadModelArtifactResponse, offset: int, data: bytes) -> Iterator[tuple[int, bytes]]:
    """``data`` split so that ``head`` + offset + data stays within MAX_RESPONSE_BYTES.

    With ``chunk_size`` at the contract's 4 MiB maximum the metadata (name, sha256, …)
    would push the message past the limit: the chunk is then sent as two messages.
    """
    # offset: tag + varint(int64) <= 11 bytes; data: tag + varint(length) <= 6 bytes.
    budget = MAX_RESPONSE_BYTES - head.ByteSize() - 11 - 6
    for start in range(0, len(data), budget):
        yield offset + start, data[start:start + budget]


_DEFAULT_CHUNK = 1024 * 1024
_EXPORT_IDS = {
    convert.format_from_proto(v).lower().replace("_", "-"): convert.format_from_proto(v)
    for v in model_version_pb2.ArtifactFormat.values() if v
}


_END = object()


async def _syncing_when_idle(
    messages: AsyncIterator[T], idle_s: float, on_idle: Callable[[], Awaitable[None]],
) -> AsyncIterator[T]:
    """``messages``, calling ``on_idle`` whenever the next one takes over ``idle_s`` to come.

    The read is never cancelled for it (a cancelled read would end the stream): it runs
    as a task that the wait only watches.
    """
    iterator = aiter(messages)
    while True:
        task = asyncio.ensure_future(anext(iterator, _END))
        try:
            if not task.done():
                done, _ = await asyncio.wait((task,), timeout=idle_s)
                if not done:
                    await on_idle()
            message = await task
        finally:
            if not task.done():
                task.cancel()
        if message is _END:
            return
        yield message  # type: ignore[misc]


def _model_id(name: str) -> str:
    return name.split("/")[1]


def _version_ref(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return parts[1], parts[3]


def _labels(selector: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in selector.split(",") if pair)


M = TypeVar("M", bound=Message)


class ReadCache:
    """Responses of the read RPCs, kept while the store's ``generation`` is unchanged.

    The registry process is its database's only writer and every committed write bumps
    :attr:`Registry.generation` before the writing RPC answers, so a response built from
    a read that began at generation ``g`` is current for as long as the generation is
    still ``g``; any write empties the cache. Bounded by ``max_entries`` and
    ``max_bytes`` (serialized sizes; least recently used first out). Errors are not
    cached. Cached messages are shared by the calls that get them: never mutate a
    response after returning it (gRPC only serializes it).
    """

    def __init__(self, store: Any, *, max_entries: int = 1024, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._store = store
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: collections.OrderedDict[tuple[str, bytes], tuple[Message, int]] = collections.OrderedDict()
        self._bytes = 0
        self._generation = -1
        self.hits = self.misses = 0

    async def get(self, method: str, request: Message, load: Callable[[], Awaitable[M]]) -> M:
        """The cached response to ``request`` if current, else ``await load()`` (then cached)."""
        generation = self._store.generation
        key = (method, request.SerializeToString(deterministic=True))
        if generation == self._generation:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return hit[0]  # type: ignore[return-value]
        self.misses += 1
        response = await load()
        if generation > self._generation:  # the first entry of a new generation
            self._entries.clear()
            self._bytes, self._generation = 0, generation
        if generation == self._generation and self._store.generation == generation:
            size = response.ByteSize()
            if size <= self._max_bytes // 8:
                old = self._entries.pop(key, None)
                self._bytes += size - (old[1] if old else 0)
                self._entries[key] = (response, size)
                while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                    self._bytes -= self._entries.popitem(last=False)[1][1]
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Thin adapter over :class:`ModelRegistry`; Get/List answers go through a :class:`ReadCache`."""

    def __init__(self, registry: ModelRegistry, *, upload_idle_sync_s: float = 0.2) -> None:
        self._registry = registry
        self._store = registry.store
        self._upload_idle_sync_s = upload_idle_sync_s
        self._reads = ReadCache(registry.store)

    # -- models -------------------------------------------------------------------
    async def CreateModel(self, request: rr.CreateModelRequest, context: grpc.aio.ServicerContext) -> model_pb2.Model:
        m = request.model
        record = await self._store.create_model(
            request.model_id, display_name=m.display_name, description=m.description, labels=dict(m.labels),
            tags=list(m.tags), request_id=request.request_id)
        return convert.model_to_proto(record)

    async def GetModel(self, request: rr.GetModelRequest, context: grpc.aio.ServicerContext) -> model_pb2.Model:
        async def load() -> model_pb2.Model:
            return convert.model_to_proto(await self._store.get_model(_model_id(request.name)))

        return await self._reads.get("GetModel", request, load)

    async def ListModels(self, request: rr.ListModelsRequest, context: grpc.aio.ServicerContext) -> rr.ListModelsResponse:
        async def load() -> rr.ListModelsResponse:
            records, token = await self._store.list_models(
                page_size=request.page_size, page_token=request.page_token, tags=list(request.tags),
                labels=_labels(request.label_selector))
            return rr.ListModelsResponse(models=[convert.model_to_proto(r) for r in records], next_page_token=token)

        return await self._reads.get("ListModels", request, load)

    async def UpdateModel(self, request: rr.UpdateModelRequest, context: grpc.aio.ServicerContext) -> model_pb2.Model:
        m = request.model
        values: dict[str, Any] = {"display_name": m.display_name, "description": m.description,
                                  "labels": dict(m.labels), "tags": list(m.tags)}
        changes = {path: values[path] for path in request.update_mask.paths}
        record = await self._store.update_model(_model_id(m.name), changes, etag=m.etag)
        return convert.model_to_proto(record)

    async def DeleteModel(self, request: rr.DeleteModelRequest, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        await self._registry.delete_model(_model_id(request.name), force=request.force, etag=request.etag)
        return empty_pb2.Empty()

    # -- versions -----------------------------------------------------------------
    async def CreateModelVersion(
        self, request: rr.CreateModelVersionRequest, context: grpc.aio.ServicerContext,
    ) -> model_version_pb2.ModelVersion:
        v = request.model_version
        record, _ = await self._store.create_version(
            _model_id(request.parent), description=v.description, tags=list(v.tags), metrics=dict(v.metrics),
            parameters=dict(v.parameters), lineage=convert.lineage_from_proto(v.lineage),
            request_id=request.request_id)
        return convert.version_to_proto(record)

    async def GetModelVersion(
        self, request: rr.GetModelVersionRequest, context: grpc.aio.ServicerContext,
    ) -> model_version_pb2.ModelVersion:
        model_id, ref = _version_ref(request.name)

        async def load() -> model_version_pb2.ModelVersion:
            return convert.version_to_proto(await self._store.get_version(model_id, ref))

        return await self._reads.get("GetModelVersion", request, load)

    async def ListModelVersions(
        self, request: rr.ListModelVersionsRequest, context: grpc.aio.ServicerContext,
    ) -> rr.ListModelVersionsResponse:
        async def load() -> rr.ListModelVersionsResponse:
            records, token = await self._store.list_versions(
                _model_id(request.parent), page_size=request.page_size, page_token=request.page_token,
                tags=list(request.tags), alias=request.alias,
                states=[convert.state_from_proto(s) for s in request.states], order_by=request.order_by)
            return rr.ListModelVersionsResponse(
                model_versions=[convert.version_to_proto(r) for r in records], next_page_token=token)

        return await self._reads.get("ListModelVersions", request, load)

    async def UpdateModelVersion(
        self, request: rr.UpdateModelVersionRequest, context: grpc.aio.ServicerContext,
    ) -> model_version_pb2.ModelVersion:
        v = request.model_version
        values: dict[str, Any] = {"description": v.description, "tags": list(v.tags), "metrics": dict(v.metrics),
                                  "parameters": dict(v.parameters)}
        changes: dict[str, Any] = {}
        for path in request.update_mask.paths:
            if path.startswith("metrics."):
                key = path.removeprefix("metrics.")
                changes[path] = v.metrics[key] if key in v.metrics else None
            else:
                changes[path] = values[path]
        model_id, ref = _version_ref(v.name)
        record = await self._store.update_version(model_id, int(ref), changes, etag=v.etag)
        return convert.version_to_proto(record)

    async def DeleteModelVersion(
        self, request: rr.DeleteModelVersionRequest, context: grpc.aio.ServicerContext,
    ) -> empty_pb2.Empty:
        model_id, ref = _version_ref(request.name)
        await self._registry.delete_version(model_id, int(ref), force=request.force, etag=request.etag)
        return empty_pb2.Empty()

    # -- aliases --------------------------------------------------------------------
    async def SetModelAlias(self, request: rr.SetModelAliasRequest, context: grpc.aio.ServicerContext) -> model_pb2.Model:
        record = await self._store.set_alias(_model_id(request.name), request.alias, int(request.version),
                                             etag=request.etag)
        return convert.model_to_proto(record)

    async def DeleteModelAlias(
        self, request: rr.DeleteModelAliasRequest, context: grpc.aio.ServicerContext,
    ) -> model_pb2.Model:
        record = await self._store.delete_alias(_model_id(request.name), request.alias, etag=request.etag)
        return convert.model_to_proto(record)

    # -- artifacts ------------------------------------------------------------------
    async def UploadModelArtifact(
        self, request_iterator: AsyncIterator[rr.UploadModelArtifactRequest], context: grpc.aio.ServicerContext,
    ) -> rr.UploadModelArtifactResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidArgument("the first message of an upload must be a header",
                                  [("header", "the first message must be a header")])
        h = first.header
        model_id, ref = _version_ref(h.name)
        header = UploadHeader(size_bytes=h.size_bytes, sha256=h.sha256,
                              content_type=h.content_type or "application/octet-stream",
                              format=convert.format_from_proto(h.format))
        async with self._registry.upload(model_id, int(ref), header) as session:
            async for message in _syncing_when_idle(request_iterator, self._upload_idle_sync_s, session.sync):
                if message.WhichOneof("kind") != "chunk":
                    raise InvalidArgument("only the first message may be a header",
                                          [("header", "only the first message may be a header")])
                await session.write(message.chunk.offset, message.chunk.data)
            version = session.version if session.complete else await session.current()
            return rr.UploadModelArtifactResponse(
                model_version=convert.version_to_proto(version), committed_bytes=session.committed,
                complete=session.complete, sha256=session.sha256)

    async def DownloadModelArtifact(
        self, request: rr.DownloadModelArtifactRequest, context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rr.DownloadModelArtifactResponse]:
        model_id, ref = _version_ref(request.name)
        chunks = self._registry.download(
            model_id, ref, offset=request.offset, read_limit=request.read_limit,
            chunk_size=request.chunk_size or _DEFAULT_CHUNK, fmt=convert.format_from_proto(request.format))
        head: rr.DownloadModelArtifactResponse | None = None
        async with contextlib.aclosing(chunks):  # its file is closed when the stream ends
            async for chunk in chunks:
                if head is None:  # the same for every chunk of one download
                    head = rr.DownloadModelArtifactResponse(
                        model_version=chunk.version.name, total_size_bytes=chunk.total_size, sha256=chunk.sha256,
                        content_type=chunk.content_type, format=convert.format_to_proto(chunk.format))
                for offset, data in _fit(head, chunk.offset, chunk.data):
                    message = rr.DownloadModelArtifactResponse()
                    message.CopyFrom(head)
                    message.offset, message.data = offset, data
                    yield message

    # -- exports --------------------------------------------------------------------
    async def ExportModelVersion(
        self, request: rr.ExportModelVersionRequest, context: grpc.aio.ServicerContext,
    ) -> model_export_pb2.ModelExport:
        model_id, ref = _version_ref(request.name)
        record = await self._registry.export(model_id, int(ref), convert.format_from_proto(request.format),
                                             force=request.force)
        return convert.export_to_proto(record)

    async def GetModelExport(
        self, request: rr.GetModelExportRequest, context: grpc.aio.ServicerContext,
    ) -> model_export_pb2.ModelExport:
        parts = request.name.split("/")
        fmt = _EXPORT_IDS.get(parts[5])
        if fmt is None:
            raise NotFound(f"{request.name} not found (no such export format)", reason="EXPORT_NOT_FOUND",
                           metadata={"name": request.name})

        async def load() -> model_export_pb2.ModelExport:
            return convert.export_to_proto(await self._store.get_export(parts[1], int(parts[3]), fmt))

        return await self._reads.get("GetModelExport", request, load)

    async def ListModelExports(
        self, request: rr.ListModelExportsRequest, context: grpc.aio.ServicerContext,
    ) -> rr.ListModelExportsResponse:
        model_id, ref = _version_ref(request.parent)

        async def load() -> rr.ListModelExportsResponse:
            records, token = await self._store.list_exports(model_id, int(ref), page_size=request.page_size,
                                                            page_token=request.page_token)
            return rr.ListModelExportsResponse(model_exports=[convert.export_to_proto(r) for r in records],
                                               next_page_token=token)

        return await self._reads.get("ListModelExports", request, load)
