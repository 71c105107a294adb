"""The launcher's control socket: how ``python -m services.launcher restart NAME`` reaches a running mesh.

A running :class:`~services.launcher.mesh.Mesh` listens on a Unix stream socket,
``<run_dir>/control.sock`` (``.run/control.sock`` for ``make up``), created with mode
0600; a peer whose uid (``SO_PEERCRED``) is not the launcher's is refused. One request
per connection, one JSON line each way::

    -> {"command": "restart", "name": "training"}
    <- {"ok": true, "pid": 41234}
    -> {"command": "status"}
    <- {"ok": true, "status": {"training": {"pid": 41234, "running": true, "restarts": 1, "held": false}, ...}}
    <- {"ok": false, "error": "no process 'trainer' in this mesh; known: valkey, training, ..."}

A restart goes through the mesh's supervisor (so it never races a crash restart) and is
answered once the new process is healthy. Chosen over a signal plus a control file
because the caller gets the outcome (new pid or the error) on the same connection, and a
socket that nobody listens on says at once that no mesh runs there.

Paths longer than a Unix socket address allows (~107 bytes, e.g. deep pytest temp dirs)
are reached through ``/proc/self/fd/<dir fd>/control.sock`` (Linux).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.launcher.mesh import Mesh

__all__ = ["ControlError", "ControlServer", "request"]

_MAX_LINE = 4096
_SUN_PATH_MAX = 100


class ControlError(RuntimeError):
    """No mesh answers on the control socket, or it answered with an error."""


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """A socket address for ``path`` that fits ``sun_path``."""
    text = str(path)
    if len(text.encode()) <= _SUN_PATH_MAX:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(_MAX_LINE)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_LINE:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]


class ControlServer:
    """Serves the control socket of ``mesh`` on a thread; :meth:`close` removes it."""

    def __init__(self, mesh: Mesh, path: Path) -> None:
        self.mesh = mesh
        self.path = path
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> ControlServer:
        self.path.unlink(missing_ok=True)  # a crashed launcher's (the pid file check ran first)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with _addressable(self.path) as address:
                sock.bind(address)
        finally:
            os.umask(old_umask)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="mesh-control", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), name="mesh-control-conn", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10.0)
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _, uid, _ = struct.unpack("3i", creds)
                if uid != os.getuid():
                    reply: dict[str, Any] = {"ok": False, "error": "permission denied"}
                else:
                    reply = self._answer(json.loads(_read_line(conn) or b"null"))
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            with contextlib.suppress(OSError):
                conn.settimeout(None)
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _answer(self, req: object) -> dict[str, Any]:
        if not isinstance(req, dict) or not isinstance(req.get("command"), str):
            return {"ok": False, "error": 'expected {"command": "restart"|"status", ...}'}
        command = req["command"]
        if command == "status":
            return {"ok": True, "status": self.mesh.status(), "failure": self.mesh.failure}
        if command == "restart":
            name = req.get("name")
            if not isinstance(name, str) or not name:
                return {"ok": False, "error": "restart needs a process name"}
            try:
                return {"ok": True, "pid": self.mesh.restart_service(name)}
            except KeyError as exc:
                return {"ok": False, "error": str(exc.args[0]) if exc.args else str(exc)}
            except Exception as exc:  # noqa: BLE001 - the caller reads why
                return {"ok": False, "error": f"{name} did not come back: {exc}"}
        return {"ok": False, "error": f"unknown command {command!r}; known: restart, status"}

    def close(self) -> None:
        self._closed.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.path.unlink(missing_ok=True)


def request(run_dir: Path, payload: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Send one request to the mesh running with ``run_dir``; its JSON answer.

    Raises :class:`ControlError` when no mesh listens there or the answer is not ``ok``.
    """
    path = Path(run_dir) / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _addressable(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no mesh is running with run dir {run_dir} (nothing listens on {path})") from exc
        sock.sendall(json.dumps(payload).encode() + b"\n")
        line = _read_line(sock)
    if not line:
        raise ControlError("the launcher closed the connection without an answer")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", reply)))
    return dict(reply)
