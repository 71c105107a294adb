"""Fixtures for the launcher tests: stand-in services and leak checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from services.launcher.mesh import MeshConfig

STANDIN = Path(__file__).with_name("standin_service.py")


def standin(name: str, *extra: str) -> list[str]:
    """argv of the stand-in service (the real shared runtime, no servicers)."""
    return [sys.executable, str(STANDIN), name, *extra]


def standin_config(tmp_path: Path, services: tuple[str, ...] = ("training",), **kwargs: object) -> MeshConfig:
    """A MeshConfig running stand-ins, with its run and data dirs under ``tmp_path``."""
    commands = {name: standin(name) for name in services}
    commands.update(kwargs.pop("commands", {}))  # type: ignore[arg-type]
    kwargs.setdefault("startup_timeout", 30.0)
    kwargs.setdefault("stop_grace", 5.0)
    return MeshConfig(
        services=services,
        commands=commands,
        run_dir=tmp_path / "run",
        data_dir=tmp_path / "data",
        **kwargs,  # type: ignore[arg-type]
    )


def live_descendants() -> set[int]:
    """Pids of this test process's live (non-zombie) descendants."""
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    """The pids still alive (non-zombie) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if alive:
            time.sleep(0.05)
    return alive


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if it leaves child processes behind."""
    before = live_descendants()
    yield
    leaked = wait_gone(live_descendants() - before, timeout=10.0)
    assert not leaked, f"processes left running: {[psutil.Process(p).cmdline() for p in leaked]}"


@pytest.fixture
def spawn_group() -> Iterator[Callable[[list[str]], subprocess.Popen[bytes]]]:
    """Start processes in their own process group; the groups are killed after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
