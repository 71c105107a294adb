"""Artifact and export files on disk, written atomically.

Layout under the root::

    <model>/<version>/artifact          the verified artifact (READY)
    <model>/<version>/artifact.part     an upload in progress (committed bytes)
    <model>/<version>/export-<format>   a finished export

Uploads append to ``artifact.part`` through a :class:`PartWriter` (one open file and
the running sha256 of its bytes, so the digest is known when the last byte arrives
without reading the file again) and fsync before the committed offset is stored, so
after a crash the part file holds at least the committed bytes (extra bytes are
truncated on resume). A verified upload is ``os.replace``d into place; exports are
written to a temporary file and replaced likewise. All methods block: call them on a
worker thread (``asyncio.to_thread``, or the upload's own single-thread executor).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["ArtifactFiles", "PartWriter", "sha256_file"]

_READ = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_READ):
            digest.update(block)
    return digest.hexdigest()


class PartWriter:
    """An upload's part file open for appending, with the sha256 of every byte in it.

    Opening hashes the bytes already there (a resumed upload's committed prefix) once;
    :meth:`append` writes and hashes each chunk as it comes; :meth:`sync` makes the bytes
    durable (fsync) and returns how many there are. Not thread-safe: one thread at a time
    (the upload's single-thread executor keeps the calls in order).
    """

    def __init__(self, path: Path) -> None:
        self._digest = hashlib.sha256()
        self._file = path.open("r+b")
        try:
            while block := self._file.read(_READ):
                self._digest.update(block)
            self.size = self._file.tell()
        except BaseException:
            self._file.close()
            raise
        self.synced = self.size
        self._failed = False

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end and hash it; returns the new size in bytes.

        After a failed write (a full disk, ...) every later append raises too: ``size``
        and the digest keep counting only the bytes written in order before it.
        """
        if self._failed:
            raise OSError("an earlier write to this upload's part file failed")
        try:
            self._file.write(data)
        except BaseException:
            self._failed = True
            raise
        self._digest.update(data)  # hashlib releases the GIL for large buffers
        self.size += len(data)
        return self.size

    def sync(self) -> int:
        """fsync the file; returns the size now durable (only bytes written in order)."""
        if self.synced != self.size:
            self._file.flush()
            os.fsync(self._file.fileno())
            self.synced = self.size
        return self.synced

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        self._file.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactFiles:
    """Files of versions and exports below ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def version_dir(self, model_id: str, version: int) -> Path:
        return self.root / model_id / str(version)

    def artifact_path(self, model_id: str, version: int) -> Path:
        return self.version_dir(model_id, version) / "artifact"

    def part_path(self, model_id: str, version: int) -> Path:
        return self.version_dir(model_id, version) / "artifact.part"

    def export_path(self, model_id: str, version: int, fmt: str) -> Path:
        return self.version_dir(model_id, version) / f"export-{fmt.lower()}"

    # -- uploads ------------------------------------------------------------------
    def resume_part(self, model_id: str, version: int, committed: int) -> int:
        """Make the part file hold exactly the committed bytes; return how many it holds."""
        part = self.part_path(model_id, version)
        part.parent.mkdir(parents=True, exist_ok=True)
        if committed == 0 or not part.exists():
            part.write_bytes(b"")
            return 0
        size = part.stat().st_size
        if size > committed:
            with part.open("r+b") as f:
                f.truncate(committed)
                f.flush()
                os.fsync(f.fileno())
            return committed
        return size  # shorter than recorded (should not happen): resume from what is there

    def open_part(self, model_id: str, version: int) -> PartWriter:
        """The part file (as :meth:`resume_part` left it) open for appending."""
        return PartWriter(self.part_path(model_id, version))

    def commit_part(self, model_id: str, version: int) -> Path:
        """Move the verified part file into place."""
        final = self.artifact_path(model_id, version)
        os.replace(self.part_path(model_id, version), final)
        _fsync_dir(final.parent)
        return final

    def discard_part(self, model_id: str, version: int) -> None:
        self.part_path(model_id, version).unlink(missing_ok=True)

    # -- whole files -----------------------------------------------------------------
    def write_atomic(self, path: Path, write: Callable[[BinaryIO], None]) -> tuple[int, str]:
        """Write a file through ``write(f)`` atomically; return (size, sha256)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return path.stat().st_size, sha256_file(path)

    @staticmethod
    def read(path: Path, offset: int, size: int) -> bytes:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(size)

    @staticmethod
    def open_read(path: Path) -> int:
        """A file descriptor for :func:`os.pread` (the caller closes it)."""
        return os.open(path, os.O_RDONLY)

    def remove_version(self, model_id: str, version: int) -> None:
        shutil.rmtree(self.version_dir(model_id, version), ignore_errors=True)

    def remove_model(self, model_id: str) -> None:
        shutil.rmtree(self.root / model_id, ignore_errors=True)
