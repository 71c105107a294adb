"""Resumable upload (offsets, cut-off, checksum) and ranged download."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from agentforge.model.v1 import model_service_pb2_grpc
from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as rr

from services.model.config import ModelConfig
from services.model.server import create_server
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey

from .conftest import Registry, bus_config, chunk, details, header, make_model, make_version, upload_all

DATA = os.urandom(300_000)
CHUNK = 64 * 1024


async def committed(registry: Registry, name: str) -> int:
    version = await registry.stub.GetModelVersion(rr.GetModelVersionRequest(name=name))
    return version.artifact.committed_bytes


async def test_upload_cut_off_midway_resumes_from_committed_bytes(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "up")
    v = await make_version(stub, "up")
    call = stub.UploadModelArtifact()
    await call.write(header(v.name, DATA))
    await call.write(chunk(0, DATA[:CHUNK]))
    await call.write(chunk(CHUNK, DATA[CHUNK:2 * CHUNK]))
    async with asyncio.timeout(5):
        while await committed(registry, v.name) != 2 * CHUNK:
            await asyncio.sleep(0.02)
    call.cancel()  # the connection breaks mid-upload
    state = await stub.GetModelVersion(rr.GetModelVersionRequest(name=v.name))
    assert state.artifact.state == mv.ARTIFACT_STATE_UPLOADING
    assert state.state == mv.MODEL_VERSION_STATE_REGISTERING

    resume_at = state.artifact.committed_bytes
    messages = [header(v.name, DATA)] + [chunk(o, DATA[o:o + CHUNK]) for o in range(resume_at, len(DATA), CHUNK)]
    response = await stub.UploadModelArtifact(iter(messages))
    assert response.complete and response.committed_bytes == len(DATA)
    assert response.sha256 == hashlib.sha256(DATA).hexdigest()
    assert response.model_version.state == mv.MODEL_VERSION_STATE_READY
    assert response.model_version.artifact.state == mv.ARTIFACT_STATE_READY
    assert (registry.config.artifacts_dir / "up" / "1" / "artifact").read_bytes() == DATA


async def test_client_closing_early_gets_complete_false(registry: Registry) -> None:
    await make_model(registry.stub, "early")
    v = await make_version(registry.stub, "early")
    response = await registry.stub.UploadModelArtifact(iter([header(v.name, DATA), chunk(0, DATA[:1000])]))
    assert (response.complete, response.committed_bytes) == (False, 1000)


async def test_wrong_offset_is_failed_precondition_with_committed_bytes(registry: Registry) -> None:
    await make_model(registry.stub, "off")
    v = await make_version(registry.stub, "off")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry.stub.UploadModelArtifact(iter([header(v.name, DATA), chunk(0, DATA[:100]),
                                                      chunk(500, DATA[500:600])]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info, _ = details(err.value)
    assert info.reason == "UPLOAD_OFFSET_MISMATCH" and info.metadata["committed_bytes"] == "100"
    assert info.domain == "agentforge.dev"


async def test_checksum_mismatch_is_invalid_argument_and_discards_the_bytes(registry: Registry) -> None:
    """A wrong declared sha256 is the client's mistake: 4xx-class, never DATA_LOSS (issue 8)."""
    stub = registry.stub
    await make_model(stub, "sum")
    v = await make_version(stub, "sum")
    bad = [header(v.name, DATA, sha256="0" * 64)] + [chunk(o, DATA[o:o + CHUNK]) for o in range(0, len(DATA), CHUNK)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadModelArtifact(iter(bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = details(err.value)
    assert info.reason == "CHECKSUM_MISMATCH" and [f for f, _ in violations] == ["header.sha256"]
    state = await stub.GetModelVersion(rr.GetModelVersionRequest(name=v.name))
    assert state.state == mv.MODEL_VERSION_STATE_FAILED
    assert state.artifact.state == mv.ARTIFACT_STATE_FAILED and state.artifact.committed_bytes == 0
    assert state.artifact.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert (await upload_all(stub, v.name, DATA)).complete  # upload again from 0


async def test_ready_version_refuses_another_upload_and_oversize_is_rejected(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "ro")
    v = await make_version(stub, "ro")
    await upload_all(stub, v.name, b"weights")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload_all(stub, v.name, b"other")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    v2 = await make_version(stub, "ro")
    too_big = rr.UploadModelArtifactRequest(header=rr.UploadHeader(
        name=v2.name, size_bytes=registry.config.max_artifact_bytes + 1, sha256="a" * 64,
        format=mv.ARTIFACT_FORMAT_STATE_DICT))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UploadModelArtifact(iter([too_big]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(err.value)[1][0][0] == "header.size_bytes"


async def test_download_from_an_offset_reassembles_byte_exact(registry: Registry) -> None:
    stub = registry.stub
    await make_model(stub, "dl")
    v = await make_version(stub, "dl")
    await upload_all(stub, v.name, DATA)
    await stub.SetModelAlias(rr.SetModelAliasRequest(name="models/dl", alias="prod", version="1"))
    got = bytearray()
    async for part in stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(
            name="models/dl/versions/prod", chunk_size=4096, read_limit=10_000)):
        if part.HasField("stream_end"):  # the last message carries the final status only
            assert part.stream_end.code == 0 and not part.data
            continue
        assert part.model_version == v.name and part.offset == len(got)
        got += part.data
    assert len(got) == 10_000  # the stream "broke" here: resume from the offset
    async for part in stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(
            name=v.name, offset=len(got), chunk_size=65536)):
        if part.HasField("stream_end"):
            assert part.stream_end.code == 0
            continue
        assert part.offset == len(got) and part.total_size_bytes == len(DATA)
        sha = part.sha256
        got += part.data
    assert bytes(got) == DATA and hashlib.sha256(got).hexdigest() == sha
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(name=v.name, offset=len(DATA))):
            pass
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_download_of_an_unfinished_artifact_is_failed_precondition(registry: Registry) -> None:
    await make_model(registry.stub, "nr")
    v = await make_version(registry.stub, "nr")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in registry.stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(name=v.name)):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_largest_chunk_size_is_receivable_by_a_default_grpc_client(registry: Registry) -> None:
    """Issue 8: chunk_size 4 MiB (the contract's maximum) must not produce messages over
    gRPC's default 4 MiB receive limit, counting the whole message."""
    stub = registry.stub
    await make_model(stub, "big")
    v = await make_version(stub, "big")
    data = os.urandom(9 * 1024 * 1024 + 123)
    await upload_all(stub, v.name, data, size=1024 * 1024)
    # A fresh channel with gRPC's default limits (the registry's own may differ).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.app.port}") as channel:
        client = model_service_pb2_grpc.ModelServiceStub(channel)
        call = client.DownloadModelArtifact(rr.DownloadModelArtifactRequest(name=v.name, chunk_size=4 * 1024 * 1024))
        messages = [m async for m in call if not m.HasField("stream_end")]
    assert max(m.ByteSize() for m in messages) <= 4 * 1024 * 1024
    assert b"".join(m.data for m in messages) == data
    assert [m.offset for m in messages] == list(itertools.accumulate([0] + [len(m.data) for m in messages[:-1]]))


# -- the upload's write path: chunks written on a thread, fsync + committed_bytes at sync
# points (every upload_sync_bytes, when the client pauses, at the end of the stream).

@contextlib.asynccontextmanager
async def _registry(tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str, **config: Any) -> AsyncIterator[Any]:
    cfg = ModelConfig(data_dir=tmp_path / "model", events_stream=stream_prefix + "events.model",
                      training_stream=stream_prefix + "events.training", outbox_poll_s=0.2, **config)
    app = await create_server(cfg, server_config=ServerConfig(grace_seconds=0.5, metrics_port=-1),
                              bus_config=bus_config(valkey.url))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield model_service_pb2_grpc.ModelServiceStub(channel), cfg
    finally:
        await app.close()


async def test_uneven_chunks_across_sync_points_arrive_byte_exact(
        tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str) -> None:
    data = random.Random(7).randbytes(1_500_000 + 17)
    sizes = random.Random(8)
    chunks, offset = [], 0
    while offset < len(data):  # 1 B to 200 kB, crossing every 100 kB sync point at odd places
        n = sizes.choice([1, 7, 4096, 65_537, 99_999, 100_001, 200_000])
        chunks.append(chunk(offset, data[offset:offset + n]))
        offset += n
    async with _registry(tmp_path, valkey, stream_prefix, upload_sync_bytes=100_000) as (stub, cfg):
        await make_model(stub, "uneven")
        v = await make_version(stub, "uneven")
        response = await stub.UploadModelArtifact(iter([header(v.name, data)] + chunks))
        assert response.complete and response.committed_bytes == len(data)
        assert response.sha256 == hashlib.sha256(data).hexdigest()
        assert response.model_version.artifact.committed_bytes == len(data)
        assert (cfg.artifacts_dir / "uneven" / "1" / "artifact").read_bytes() == data
        assert not (cfg.artifacts_dir / "uneven" / "1" / "artifact.part").exists()


async def test_committed_bytes_move_at_sync_points_and_a_resumed_upload_hashes_its_prefix(
        tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str) -> None:
    """With the idle sync out of the way, committed_bytes advances every upload_sync_bytes
    and when the stream ends; the resumed stream's sha256 covers the bytes of the first."""
    data = os.urandom(400_000)
    step = 50_000
    async with _registry(tmp_path, valkey, stream_prefix, upload_sync_bytes=100_000,
                         upload_idle_sync_s=3600) as (stub, cfg):
        await make_model(stub, "sync")
        v = await make_version(stub, "sync")
        call = stub.UploadModelArtifact()
        await call.write(header(v.name, data))
        for o in range(0, 150_000, step):
            await call.write(chunk(o, data[o:o + step]))

        async def committed_is(n: int) -> bool:
            state = await stub.GetModelVersion(rr.GetModelVersionRequest(name=v.name))
            return state.artifact.committed_bytes == n

        # 100,000 bytes are past the sync point; the last 50,000 wait for the next one.
        async with asyncio.timeout(10):
            while not await committed_is(100_000):
                await asyncio.sleep(0.02)
        part = cfg.artifacts_dir / "sync" / "1" / "artifact.part"
        call.cancel()  # the stream breaks: what arrived is made durable and recorded
        async with asyncio.timeout(10):
            while not await committed_is(150_000):
                await asyncio.sleep(0.02)
        assert part.read_bytes() == data[:150_000]

        rest = [chunk(o, data[o:o + step]) for o in range(150_000, len(data), step)]
        response = await stub.UploadModelArtifact(iter([header(v.name, data)] + rest))
        assert response.complete and response.sha256 == hashlib.sha256(data).hexdigest()
        assert (cfg.artifacts_dir / "sync" / "1" / "artifact").read_bytes() == data


async def test_a_wrong_checksum_across_sync_points_is_still_caught(
        tmp_path: Path, valkey: EmbeddedValkey, stream_prefix: str) -> None:
    data = os.urandom(300_000)
    async with _registry(tmp_path, valkey, stream_prefix, upload_sync_bytes=64 * 1024) as (stub, cfg):
        await make_model(stub, "flip")
        v = await make_version(stub, "flip")
        flipped = data[:200_000] + bytes([data[200_000] ^ 1]) + data[200_001:]
        messages = [header(v.name, data)] + [chunk(o, flipped[o:o + CHUNK]) for o in range(0, len(data), CHUNK)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UploadModelArtifact(iter(messages))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(err.value)[0].reason == "CHECKSUM_MISMATCH"
        assert not (cfg.artifacts_dir / "flip" / "1" / "artifact.part").exists()
        assert (await upload_all(stub, v.name, data)).complete


def test_after_a_failed_write_the_part_writer_counts_only_what_was_written_in_order(tmp_path: Path) -> None:
    """A full disk mid-upload: later chunks are refused, and the durable size (what becomes
    committed_bytes) stops before the failed chunk, so a resume never skips a hole."""
    from services.model.artifacts import PartWriter

    part = tmp_path / "artifact.part"
    part.write_bytes(b"")
    writer = PartWriter(part)
    writer.append(b"a" * 10)

    class FullDisk:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    real = writer._file
    writer._file = FullDisk(real)
    with pytest.raises(OSError):
        writer.append(b"b" * 10)
    writer._file = real  # the disk has room again: still refused, the stream has failed
    with pytest.raises(OSError):
        writer.append(b"c" * 10)
    assert writer.sync() == 10 and writer.hexdigest() == hashlib.sha256(b"a" * 10).hexdigest()
    writer.close()
    assert part.read_bytes() == b"a" * 10
