"""Registry operations that span the database and the files: uploads, downloads,
exports, deletes and the training hand-off. No gRPC here.

Upload protocol (see ``UploadModelArtifact`` in the contract): :meth:`ModelRegistry.upload`
opens an :class:`UploadSession` for one stream; it checks the header against the upload
in progress, accepts chunks only at the committed offset (``UPLOAD_OFFSET_MISMATCH``
otherwise), makes the bytes durable (fsync) before it stores them as ``committed_bytes``
(every ``upload_sync_bytes``, when the client pauses and when the stream ends — so a
broken stream resumes at every byte that arrived, a crashed server at most
``upload_sync_bytes`` earlier) and verifies size and sha256 after the last byte
(``CHECKSUM_MISMATCH``/``SIZE_MISMATCH`` → INVALID_ARGUMENT, a client's mistake: bytes
discarded, upload again from 0).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.model import exports
from services.shared.errors import DataLoss, OutOfRange
from services.model.artifacts import ArtifactFiles, PartWriter, sha256_file
from services.model.store import ArtifactRecord, ExportRecord, Lineage, Registry, VersionRecord, now_us
from services.shared.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from services.shared.tasks import cancel_and_wait

__all__ = ["Chunk", "Handoff", "ModelRegistry", "UploadHeader", "UploadSession", "register_handoff"]

_log = logging.getLogger(__name__)
T = TypeVar("T")
#: Chunks of one upload queued for its writer thread before the stream waits for them.
_WRITES_IN_FLIGHT = 4
_INVALID_ARGUMENT = 3
_INTERNAL = 13
_FAILED_PRECONDITION = 9
_METRIC_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,127}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class UploadHeader:
    size_bytes: int
    sha256: str
    content_type: str
    format: str


@dataclass(frozen=True)
class Chunk:
    """A piece of a file being downloaded."""

    version: VersionRecord
    offset: int
    data: bytes
    total_size: int
    sha256: str
    content_type: str
    format: str


class UploadSession:
    """One upload stream on one version; use through :meth:`ModelRegistry.upload`.

    Chunks are written and hashed on the session's own thread while the stream goes on
    receiving (at most ``_WRITES_IN_FLIGHT`` chunks queued, so memory stays bounded
    whatever the file's size). The bytes received are made durable (fsync) and recorded
    as ``committed_bytes`` every ``sync_bytes``, when the client pauses (:meth:`sync`,
    called by the servicer) and when the stream ends however it ends; the sha256 is the
    running digest of the bytes written, so the last byte needs no second read.
    """

    def __init__(self, registry: ModelRegistry, version: VersionRecord, header: UploadHeader, committed: int,
                 writer: PartWriter, executor: ThreadPoolExecutor) -> None:
        self._registry = registry
        self._store = registry.store
        self._files = registry.files
        self._sync_bytes = registry.upload_sync_bytes
        self._writer = writer
        self._executor = executor
        self._writes: collections.deque[asyncio.Future[int]] = collections.deque()
        self.version = version
        self.header = header
        #: Bytes received in order (durable once :meth:`sync` returned).
        self.committed = committed
        self._recorded = committed  # fsynced and stored as committed_bytes
        self.complete = False
        self.sha256 = ""
        self._closed = False

    def _on_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _drain(self) -> None:
        while self._writes:
            await self._writes.popleft()

    async def write(self, offset: int, data: bytes) -> None:
        """Append one chunk at ``offset``; verifies the whole file after its last byte."""
        if self.complete:
            raise FailedPrecondition("the upload is already complete", reason="UPLOAD_COMPLETE")
        if offset != self.committed:
            raise FailedPrecondition(
                f"chunk offset {offset} does not continue at committed_bytes {self.committed}",
                reason="UPLOAD_OFFSET_MISMATCH", metadata={"committed_bytes": str(self.committed)})
        end = offset + len(data)
        if end > self.header.size_bytes:
            await self._fail(f"upload exceeds the declared size_bytes {self.header.size_bytes}", "SIZE_MISMATCH",
                             "header.size_bytes")
        self._writes.append(self._on_thread(self._writer.append, data))
        self._registry.bytes_received["upload"] += len(data)
        self.committed = end
        while self._writes and (len(self._writes) > _WRITES_IN_FLIGHT or self._writes[0].done()):
            await self._writes.popleft()  # raises what the write raised (a full disk, ...)
        if end == self.header.size_bytes:
            await self._verify()
        elif end - self._recorded >= self._sync_bytes:
            await self.sync()

    async def sync(self) -> None:
        """Make every byte received so far durable and store it as ``committed_bytes``."""
        await self._drain()
        if self.complete or self._closed or self.committed == self._recorded:
            return
        # What the writer says is durable, not what was received: after a failed write it
        # stops counting (the stream has failed; the client resumes from there).
        synced = await self._on_thread(self._writer.sync)
        if synced == self._recorded:
            return
        v = self.version
        await self._store.set_committed(v.model_id, v.version, synced)
        self._recorded = synced

    async def close(self) -> None:
        """End of the stream (any end): record what arrived, release the file."""
        try:
            if not self._closed:
                try:
                    with contextlib.suppress(Exception):
                        await self._drain()  # a failed write was (or is being) reported already
                    await self.sync()
                finally:
                    self._closed = True
                    await self._on_thread(self._writer.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _verify(self) -> None:
        v = self.version
        await self._drain()
        actual = self._writer.hexdigest()
        if actual != self.header.sha256:
            await self._fail(f"sha256 of the uploaded bytes is {actual}, the header declared {self.header.sha256}",
                             "CHECKSUM_MISMATCH", "header.sha256")
        await self._on_thread(self._writer.sync)
        await self._on_thread(self._writer.close)
        self._closed = True
        await asyncio.to_thread(self._files.commit_part, v.model_id, v.version)
        artifact = self._artifact("READY", self.committed)
        artifact.complete_time = now_us()
        self.version = await self._store.set_artifact(v.model_id, v.version, artifact, state="READY")
        self.complete = True
        self.sha256 = actual

    async def _fail(self, message: str, reason: str, field: str) -> None:
        """Discard the upload and raise INVALID_ARGUMENT: the client declared a size or
        digest its bytes do not have (never 5xx: nothing was lost on our side)."""
        v = self.version
        with contextlib.suppress(Exception):
            await self._drain()
        self._closed = True
        await self._on_thread(self._writer.close)
        await asyncio.to_thread(self._files.discard_part, v.model_id, v.version)
        artifact = self._artifact("FAILED", 0)
        artifact.error_code, artifact.error_message = _INVALID_ARGUMENT, message
        self.version = await self._store.set_artifact(v.model_id, v.version, artifact, state="FAILED")
        self.committed = self._recorded = 0
        raise InvalidArgument(message + "; the bytes were discarded, upload again from offset 0",
                              [(field, message)], reason=reason)

    def _artifact(self, state: str, committed: int) -> ArtifactRecord:
        h = self.header
        return ArtifactRecord(state=state, sha256=h.sha256, size_bytes=h.size_bytes, committed_bytes=committed,
                              content_type=h.content_type, format=h.format)

    async def current(self) -> VersionRecord:
        """The version as stored, after making what arrived durable (:meth:`sync`)."""
        await self.sync()
        self.version = await self._store.get_version(self.version.model_id, self.version.version)
        return self.version


class ModelRegistry:
    """The registry's use cases over a :class:`Registry` (SQLite) and :class:`ArtifactFiles`."""

    def __init__(self, store: Registry, files: ArtifactFiles, *, max_artifact_bytes: int,
                 upload_sync_bytes: int = 64 * 1024 * 1024) -> None:
        self.store = store
        self.files = files
        self.max_artifact_bytes = max_artifact_bytes
        #: An upload fsyncs and stores ``committed_bytes`` at least this often (bytes).
        self.upload_sync_bytes = upload_sync_bytes
        self._uploading: set[tuple[str, int]] = set()
        self._export_tasks: set[asyncio.Task[None]] = set()
        #: Artifact bytes received, by source (``upload``: UploadModelArtifact chunks
        #: accepted; ``handoff``: training checkpoints registered), and bytes of artifacts
        #: and exports handed to DownloadModelArtifact streams (docs/metrics.md).
        self.bytes_received: dict[str, int] = {"upload": 0, "handoff": 0}
        self.bytes_sent = 0

    # -- deletes (rows and files) -----------------------------------------------------
    async def delete_model(self, model_id: str, *, force: bool, etag: str) -> None:
        await self.store.delete_model(model_id, force=force, etag=etag)
        await asyncio.to_thread(self.files.remove_model, model_id)

    async def delete_version(self, model_id: str, version: int, *, force: bool, etag: str) -> None:
        await self.store.delete_version(model_id, version, force=force, etag=etag)
        await asyncio.to_thread(self.files.remove_version, model_id, version)

    # -- upload ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def upload(self, model_id: str, version: int, header: UploadHeader) -> AsyncIterator[UploadSession]:
        """Open an upload on a version that is not READY; one stream per version at a time."""
        if header.size_bytes > self.max_artifact_bytes:
            raise InvalidArgument(
                f"size_bytes {header.size_bytes} exceeds this registry's limit of {self.max_artifact_bytes}",
                [("header.size_bytes", f"must be at most {self.max_artifact_bytes}")],
                reason="ARTIFACT_TOO_LARGE")
        key = (model_id, version)
        current = await self.store.get_version(model_id, version)
        if current.state == "READY":
            raise FailedPrecondition(f"{current.name} is READY; its artifact never changes (create a new version)",
                                     reason="VERSION_READY")
        if key in self._uploading:
            raise Aborted(f"another upload to {current.name} is in progress", reason="UPLOAD_IN_PROGRESS")
        self._uploading.add(key)
        try:
            a = current.artifact
            same = (a.state == "UPLOADING" and a.size_bytes == header.size_bytes and a.sha256 == header.sha256
                    and a.format == header.format)
            committed = await asyncio.to_thread(self.files.resume_part, model_id, version,
                                                a.committed_bytes if same else 0)
            if not same or committed != a.committed_bytes:
                artifact = ArtifactRecord(state="UPLOADING" if committed else "PENDING", sha256=header.sha256,
                                          size_bytes=header.size_bytes, committed_bytes=committed,
                                          content_type=header.content_type, format=header.format)
                current = await self.store.set_artifact(model_id, version, artifact, state="REGISTERING")
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"upload-{model_id}-{version}")
            try:
                writer = await asyncio.get_running_loop().run_in_executor(
                    executor, self.files.open_part, model_id, version)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            session = UploadSession(self, current, header, committed, writer, executor)
            try:
                yield session
            finally:
                await session.close()
        finally:
            self._uploading.discard(key)

    # -- download -----------------------------------------------------------------------------
    async def download(
        self, model_id: str, ref: str, *, offset: int, read_limit: int, chunk_size: int, fmt: str,
    ) -> AsyncIterator[Chunk]:
        """Chunks of the artifact (or of its ``fmt`` export) from ``offset``."""
        v = await self.store.get_version(model_id, ref)
        if v.artifact.state != "READY":
            raise FailedPrecondition(f"the artifact of {v.name} is {v.artifact.state}, not READY",
                                     reason="ARTIFACT_NOT_READY")
        if fmt:
            e = await self.store.get_export(model_id, v.version, fmt)
            if e.state != "SUCCEEDED":
                raise FailedPrecondition(f"{e.name} is {e.state}, not SUCCEEDED", reason="EXPORT_NOT_READY")
            path, size, sha, ctype, out_fmt = (self.files.export_path(model_id, v.version, fmt), e.size_bytes,
                                               e.sha256, e.content_type, fmt)
        else:
            a = v.artifact
            path, size, sha, ctype, out_fmt = (self.files.artifact_path(model_id, v.version), a.size_bytes,
                                               a.sha256, a.content_type, a.format)
        if offset >= size:
            raise OutOfRange(f"offset {offset} is not below the file size {size}", reason="OFFSET_OUT_OF_RANGE",
                             metadata={"size_bytes": str(size)})
        end = size if read_limit <= 0 else min(size, offset + read_limit)
        fd = await asyncio.to_thread(self.files.open_read, path)
        loop = asyncio.get_running_loop()

        def read_at(position: int) -> asyncio.Future[bytes] | None:
            if position >= end:
                return None
            return loop.run_in_executor(None, os.pread, fd, min(chunk_size, end - position), position)

        # The next chunk is read while the current one is being sent (one read ahead).
        position, pending = offset, read_at(offset)
        try:
            while pending is not None:
                data = await pending
                if not data:
                    raise DataLoss(f"the stored file of {v.name} is shorter than recorded",
                                   reason="ARTIFACT_TRUNCATED")
                pending = read_at(position + len(data))
                self.bytes_sent += len(data)
                yield Chunk(v, position, data, size, sha, ctype, out_fmt)
                position += len(data)
        finally:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await pending
            os.close(fd)

    # -- export ---------------------------------------------------------------------------------
    async def export(self, model_id: str, version: int, fmt: str, *, force: bool) -> ExportRecord:
        """Start (or return) the conversion of a READY version to ``fmt``."""
        reason = exports.unsupported_reason(fmt)
        if reason:
            await self.store.get_version(model_id, version)  # NOT_FOUND first
            raise FailedPrecondition(reason, reason="EXPORT_FORMAT_UNSUPPORTED", metadata={"format": fmt})
        record, start = await self.store.start_export(model_id, version, fmt, force=force)
        if start:
            self._spawn(record)
        return record

    def _spawn(self, record: ExportRecord) -> None:
        task = asyncio.create_task(self._run_export(record), name=f"export {record.name}")
        self._export_tasks.add(task)
        task.add_done_callback(self._export_tasks.discard)

    async def resume_exports(self) -> None:
        """Restart conversions a previous process left unfinished."""
        for record in await self.store.unfinished_exports():
            self._spawn(record)

    async def wait_exports(self) -> None:
        if self._export_tasks:
            await asyncio.gather(*self._export_tasks, return_exceptions=True)

    async def _run_export(self, record: ExportRecord) -> None:
        record.state = "RUNNING"
        await self.store.update_export(record)
        try:
            v = await self.store.get_version(record.model_id, record.version)
            src = self.files.artifact_path(v.model_id, v.version)
            target = self.files.export_path(v.model_id, v.version, record.format)
            content_type = exports.CONTENT_TYPES[record.format]

            def work() -> tuple[int, str]:
                return self.files.write_atomic(
                    target, lambda f: exports.convert(src, v.artifact.format, record.format, v.parameters, f))

            record.size_bytes, record.sha256 = await asyncio.to_thread(work)
            record.content_type, record.state = content_type, "SUCCEEDED"
        except exports.ConversionError as exc:
            record.state, record.error_code, record.error_message = "FAILED", _FAILED_PRECONDITION, str(exc)
        except NotFound:
            return  # the version was deleted meanwhile
        except Exception as exc:  # noqa: BLE001 - recorded on the export, logged
            _log.exception("export %s failed", record.name)
            record.state, record.error_code, record.error_message = "FAILED", _INTERNAL, f"conversion failed: {exc}"
        record.complete_time = now_us()
        with contextlib.suppress(NotFound):
            await self.store.update_export(record)

    async def close(self) -> None:
        await cancel_and_wait(list(self._export_tasks))


# --------------------------------------------------------------------------- hand-off
@dataclass(frozen=True)
class Handoff:
    """A finished training job's final checkpoint, as the registry needs it."""

    model_id: str
    display_name: str
    training_job: str
    checkpoint: str
    checkpoint_path: Path
    checkpoint_sha256: str
    phase: str
    phase_run: str
    metrics: Mapping[str, float]
    parameters: Mapping[str, str]


async def register_handoff(registry: ModelRegistry, h: Handoff) -> tuple[VersionRecord, bool]:
    """Register (once per checkpoint) a READY version holding the checkpoint's weights.

    Redelivery of the same checkpoint returns the existing version; a version whose
    artifact did not finish (crash mid-way) gets its artifact written again.
    """
    if not _MODEL_ID.match(h.model_id):
        raise InvalidArgument(f"model id {h.model_id!r} is not valid", [("model", "must match [a-z0-9][a-z0-9-]*")])
    store = registry.store
    existing = await store.find_version_by_checkpoint(h.checkpoint)
    if existing is not None and existing.state == "READY":
        return existing, False
    if existing is None:
        await store.create_model(h.model_id, display_name=h.display_name, if_absent=True)
        metrics = {k: float(v) for k, v in h.metrics.items() if _METRIC_KEY.match(k) and math.isfinite(v)}
        version, _ = await store.create_version(
            h.model_id,
            description=f"Registered from {h.training_job} ({h.checkpoint}).",
            tags=["training-handoff"],
            metrics=metrics,
            parameters=dict(h.parameters),
            lineage=Lineage(training_job=h.training_job, checkpoint=h.checkpoint, phase_run=h.phase_run,
                            phase=h.phase),
            checkpoint_key=h.checkpoint,
        )
    else:
        version = existing
    if h.checkpoint_sha256:
        actual = await asyncio.to_thread(sha256_file, h.checkpoint_path)
        if actual != h.checkpoint_sha256.lower():
            raise DataLoss(f"checkpoint file {h.checkpoint_path} has sha256 {actual}, "
                           f"the event says {h.checkpoint_sha256}", reason="DATA_LOSS")
    files = registry.files
    target = files.artifact_path(version.model_id, version.version)

    def write() -> tuple[int, str]:
        state = exports.load_state_dict(h.checkpoint_path, "STATE_DICT")
        return files.write_atomic(target, lambda f: exports.save_state_dict(state, f))

    size, sha = await asyncio.to_thread(write)
    registry.bytes_received["handoff"] += size
    artifact = ArtifactRecord(state="READY", sha256=sha, size_bytes=size, committed_bytes=size,
                              content_type=exports.CONTENT_TYPES["STATE_DICT"], format="STATE_DICT",
                              complete_time=now_us())
    try:
        return await store.set_artifact(version.model_id, version.version, artifact, state="READY"), True
    except NotFound:  # deleted meanwhile (a phase run's compensation): leave no file behind
        await asyncio.to_thread(files.remove_version, version.model_id, version.version)
        raise

