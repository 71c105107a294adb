"""Atomic checkpoint files in ``<run_dir>/checkpoints/ckpt-<step:08d>.pt``.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced,
then ``os.replace``d into place and the directory fsynced, so a crash leaves either the
old set of checkpoints or the new one, never a partial file under a checkpoint name.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointInfo",
    "checkpoint_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
]

_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: str
    size_bytes: int
    mtime: float


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, oldest step first (temporary files are ignored)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for entry in os.scandir(d):
        m = _NAME.match(entry.name)
        if m and entry.is_file():
            st = entry.stat()
            out.append(CheckpointInfo(int(m.group(1)), entry.path, st.st_size, st.st_mtime))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> CheckpointInfo | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike[str], step: int, payload: dict[str, Any]) -> CheckpointInfo:
    """Atomically write ``payload`` as the checkpoint of ``step`` (replacing one of that step)."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{step:08d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=f".ckpt-{step:08d}-", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(d)
    st = final.stat()
    return CheckpointInfo(step, str(final), st.st_size, st.st_mtime)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint (``weights_only``: tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def prune_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints; return the removed paths."""
    found = list_checkpoints(run_dir)
    removed = []
    for info in found[: max(0, len(found) - keep)]:
        try:
            os.unlink(info.path)
            removed.append(info.path)
        except FileNotFoundError:
            pass
    if removed:
        _fsync_dir(checkpoint_dir(run_dir))
    return removed
