"""Artifact and export files on disk, written atomically.

Layout under the root::

    <model>/<version>/artifact          the verified artifact (READY)
    <model>/<version>/artifact.part     an upload in progress (committed bytes)
    <model>/<version>/export-<format>   a finished export

Uploads append to ``artifact.part`` and fsync before the committed offset is stored,
so after a crash the part file holds at least the committed bytes (extra bytes are
truncated on resume). A verified upload is ``os.replace``d into place; exports are
written to a temporary file and replaced likewise. All methods block: call them with
``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["ArtifactFiles", "sha256_file"]

_READ = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_READ):
            digest.update(block)
    return digest.hexdigest()


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

    def append(self, model_id: str, version: int, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` of the part file, fsync; return the new length."""
        with self.part_path(model_id, version).open("r+b") as f:
            f.seek(offset)
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    def part_sha256(self, model_id: str, version: int) -> str:
        return sha256_file(self.part_path(model_id, version))

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

    def remove_version(self, model_id: str, version: int) -> None:
        shutil.rmtree(self.version_dir(model_id, version), ignore_errors=True)

    def remove_model(self, model_id: str) -> None:
        shutil.rmtree(self.root / model_id, ignore_errors=True)
