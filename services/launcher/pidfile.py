"""The run directory's pid file: which process groups a mesh started, and cleanup of a crashed run.

The file (``<run_dir>/mesh.pid``, JSON) records the launcher and, for every child, its
process-group id, start time and command line::

    {"launcher": {"pid": 1, "create_time": 1.0, "cmdline": [...]},
     "groups": [{"name": "training", "pid": 2, "create_time": 2.0, "cmdline": [...]}]}

Every child is started with ``start_new_session=True``, so its pid is its group id and
``killpg`` also reaches the workers it spawned. A group is "still ours" when its leader
is alive with the recorded start time and command line (psutil), or when the leader is
gone but members of the group remain (Linux never reuses a pid while a group with that
id exists, so such members belong to the recorded group).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

__all__ = [
    "GroupRecord",
    "MeshAlreadyRunning",
    "PidFile",
    "clean_stale",
    "describe_port_holder",
    "group_members",
    "terminate_groups",
]


class MeshAlreadyRunning(RuntimeError):
    """The pid file belongs to a launcher that is still running."""


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """One process (group leader) recorded in the pid file."""

    name: str
    pid: int
    create_time: float
    cmdline: list[str]

    @classmethod
    def of(cls, name: str, pid: int) -> GroupRecord:
        """Record a running process (its start time and command line as psutil sees them)."""
        try:
            proc = psutil.Process(pid)
            return cls(name, pid, proc.create_time(), proc.cmdline())
        except psutil.Error:
            return cls(name, pid, 0.0, [])

    def is_alive_and_ours(self) -> bool:
        """The leader runs with the recorded start time and command line."""
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return abs(proc.create_time() - self.create_time) < 0.05 and proc.cmdline() == self.cmdline
        except psutil.Error:
            return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_groups(pgids: Sequence[int], grace: float) -> None:
    """SIGTERM each group (in the order given), wait up to ``grace`` s, SIGKILL the rest."""
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = list(pgids)
    while remaining and time.monotonic() < deadline:
        remaining = [pgid for pgid in remaining if group_members(pgid)]
        if remaining:
            time.sleep(0.05)
    for pgid in remaining:
        _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(group_members(pgid) for pgid in remaining) and time.monotonic() < deadline:
        time.sleep(0.05)


class PidFile:
    """Reads and rewrites ``<run_dir>/mesh.pid`` atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, groups: Sequence[GroupRecord]) -> None:
        launcher = GroupRecord.of("launcher", os.getpid())
        doc = {"launcher": asdict(launcher), "groups": [asdict(g) for g in groups]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)

    def read(self) -> tuple[GroupRecord | None, list[GroupRecord]]:
        """The launcher and groups recorded; ``(None, [])`` when missing or unreadable."""
        try:
            doc = json.loads(self.path.read_text())
            launcher = GroupRecord(**doc["launcher"]) if doc.get("launcher") else None
            return launcher, [GroupRecord(**g) for g in doc.get("groups", [])]
        except (OSError, ValueError, TypeError, KeyError):
            return None, []

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def clean_stale(pid_file: PidFile, grace: float = 5.0) -> list[GroupRecord]:
    """Terminate the groups a crashed run left behind; returns those that were still alive.

    Raises :class:`MeshAlreadyRunning` when the recorded launcher is alive (another mesh
    uses this run directory); the file is then left alone.
    """
    if not pid_file.path.exists():
        return []
    launcher, groups = pid_file.read()
    if launcher is not None and launcher.pid != os.getpid() and launcher.is_alive_and_ours():
        raise MeshAlreadyRunning(
            f"another mesh launcher (pid {launcher.pid}) is running with run dir "
            f"{pid_file.path.parent}; stop it first (Ctrl-C / kill {launcher.pid})"
        )
    stale: list[GroupRecord] = []
    for group in groups:
        if group.is_alive_and_ours():
            stale.append(group)
        else:
            try:
                leader_exists = psutil.pid_exists(group.pid) and psutil.Process(group.pid).status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                leader_exists = False
            # Leader gone but members left: the group id cannot have been reused.
            if not leader_exists and group_members(group.pid):
                stale.append(group)
    # Reverse start order: the edge first, the bus last.
    terminate_groups([g.pid for g in reversed(stale)], grace)
    pid_file.remove()
    return stale


def describe_port_holder(port: int) -> str | None:
    """``"pid 123 (envoy -c ...)"`` of the process listening on ``port``, if psutil can tell."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline())
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd[:200]})"
    return None
