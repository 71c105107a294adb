"""Unary RPC cost of the shared runtime and the Envoy edge, against a bare grpc.aio server.

One run starts, on 127.0.0.1 only, each in its own process:

(a) ``bare``: a plain ``grpc.aio.server()`` (no interceptors, no health, no metrics)
    serving ``agentforge.monitoring.v1.MonitoringService/GetComponentHealth`` with a
    trivial handler (it echoes the requested name with status SERVING);
(b) ``runtime``: the same servicer behind ``services.shared.server.build_server``
    (tracing, request id, JSON logging, Prometheus metrics, auth, deadline, error
    mapping and protovalidate interceptors; health; reflection; metrics endpoint),
    logging one JSON line per RPC to a file and exporting one span per RPC to an OTLP
    JSON file (``AF_TRACES_DIR``), like a service the launcher starts;
(c) Envoy in front of (b), its config rendered from ``envoy/envoy.yaml.tmpl`` by
    ``services.launcher.envoy_config.render_envoy_config`` with every upstream
    cluster pointed at (b).

Auth is on as in production: calls to (b) carry the mesh identity and a service's claims
(what Envoy adds), calls through (c) a bearer token that Envoy verifies (ES256); the
edge's per-subject rate limits are lifted for the measurement (one subject sends
everything).

Then a bounded closed loop (``--concurrency`` client tasks, each sending its next
request when the previous one answered, for ``--seconds`` after ``--warmup``) for:
bare gRPC direct, runtime gRPC direct (and the same with tracing off,
``OTEL_SDK_DISABLED=true``, in a second runtime process), gRPC through Envoy, and REST (HTTP/1.1 JSON,
keep-alive, one connection per client) through Envoy with Debian's ``wrk`` (a native
load generator: the Python httpx client saturated a core at a third of the edge's rate;
``--rest-client httpx`` still runs it). Prints qps, p50 and p99 and their ratios against
the bare server measured in the same run, and for scenarios that reach the runtime
server its event-loop lag (``agentforge_event_loop_lag_seconds``, scraped before and
after each scenario).

The client is one asyncio process sharing the machine's cores with the servers and
Envoy, so the figures measure the whole box, not one component; the CPU% columns
say who used the cores.

Run::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/edge_unary.py --seconds 5 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "gen" / "python"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import grpc
import grpc.aio
import httpx
import psutil
from agentforge.monitoring.v1 import (
    health_pb2,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
    request_response_pb2,
)

__all__ = ["Result", "main"]

SERVICE_FULL_NAME = monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name
COMPONENT = "components/bench"
REST_PATH = f"/v1/{COMPONENT}"
STARTUP_TIMEOUT_S = 30.0


# -- the servers (run in child processes: ``--serve bare|runtime``) ---------------------


class EchoMonitoring(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    """GetComponentHealth answers at once; nothing else is implemented."""

    async def GetComponentHealth(
        self, request: request_response_pb2.GetComponentHealthRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.ComponentHealth:
        return health_pb2.ComponentHealth(
            name=request.name,
            kind=health_pb2.COMPONENT_KIND_SERVICE,
            status=health_pb2.HEALTH_STATUS_SERVING,
        )


def _print_ready(port: int, metrics_port: int | None = None) -> None:
    print(json.dumps({"event": "ready", "grpc_port": port, "metrics_port": metrics_port}), flush=True)


async def _serve_bare() -> None:
    server = grpc.aio.server()
    monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(EchoMonitoring(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _print_ready(port)
    await stop.wait()
    await server.stop(0.5)


async def _serve_runtime() -> None:
    from services.launcher.envoy_config import SERVICES
    from services.shared.config import ServerConfig
    from services.shared.logging import configure_logging
    from services.shared.server import build_server

    from services.shared.tracing import configure_tracing

    configure_logging("monitoring", "INFO", fmt="json")  # stderr -> a log file, as a service
    # Tracing as run_service sets it up: spans to <workdir>/traces/monitoring.jsonl (AF_TRACES_DIR).
    configure_tracing("monitoring")

    def register(server: grpc.aio.Server) -> list[str]:
        monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(EchoMonitoring(), server)
        return [SERVICE_FULL_NAME]

    service = await build_server(ServerConfig(host="127.0.0.1", port=0, metrics_port=0), "monitoring", register)
    # Envoy health-checks each cluster with its own service name; all point here.
    for name in SERVICES:
        await service.set_serving(f"agentforge.{name}.v1.{name.capitalize()}Service", True)
    await service.serve_forever(on_ready=lambda: _print_ready(service.port, service.metrics_port))


# -- child processes -----------------------------------------------------------------


@dataclass
class Child:
    """A started process (own process group) and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Children:
    """Every process this run starts; :meth:`stop_all` ends them in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Child] = []

    def spawn(self, name: str, argv: Sequence[str], *, ready_line: bool,
              env_extra: dict[str, str] | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen" / "python")]),
                   AF_TRACES_DIR=str(self.workdir / "traces"), **(env_extra or {}))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                list(argv), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if ready_line else log, stderr=log, start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            child.stop()
        self.started.clear()


def _read_ready_port(child: Child) -> int:
    """Wait for the child's ready JSON line on stdout; return its gRPC port."""
    return int(_read_ready(child)["grpc_port"])


def _read_ready(child: Child) -> dict[str, Any]:
    """Wait for the child's ready JSON line on stdout; return it."""
    assert child.proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    stdout: IO[bytes] = child.proc.stdout
    os.set_blocking(stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.log_tail()}")
        chunk = stdout.read()
        if chunk:
            buf += chunk
            for line in buf.splitlines():
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if isinstance(msg, dict) and msg.get("event") == "ready":
                        return msg
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} not ready within {STARTUP_TIMEOUT_S:.0f}s:\n{child.log_tail()}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except OSError:
        return 0, ""


def start_envoy(children: Children, upstream_port: int, trace_sample: float = 1.0) -> tuple[Child, int, int]:
    """Render the edge config with every cluster at the runtime server; wait until ready."""
    from services.launcher.envoy_config import (
        RATE_LIMITS,
        SERVICES,
        RateLimit,
        default_descriptor_path,
        render_envoy_config,
    )
    from services.launcher.mesh import envoy_argv, find_envoy, unhealthy_upstreams

    edge_port, admin_port = _free_port(), _free_port()
    config = render_envoy_config(
        listen_port=edge_port,
        admin_port=admin_port,
        upstreams={name: ("127.0.0.1", upstream_port) for name in SERVICES},
        descriptor_path=default_descriptor_path(),
        rate_limits={name: RateLimit(1e6, 1_000_000) for name in RATE_LIMITS},
        trace_sample_ratio=trace_sample,
    )
    config_path = children.workdir / "envoy.yaml"
    config_path.write_text(config)
    child = children.spawn("envoy", envoy_argv(find_envoy(), config_path, "warning"), ready_line=False)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    admin = f"http://127.0.0.1:{admin_port}"
    while True:
        if child.proc.poll() is not None:
            raise RuntimeError(f"envoy exited ({child.proc.returncode}):\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"envoy not ready within {STARTUP_TIMEOUT_S:.0f}s:\n{child.log_tail()}")
        status, body = _http_get(f"{admin}/ready")
        if status == 200 and body.strip() == "LIVE":
            _, clusters = _http_get(f"{admin}/clusters")
            if not unhealthy_upstreams(clusters, {"monitoring": upstream_port}):
                return child, edge_port, admin_port
        time.sleep(0.1)


# -- the load --------------------------------------------------------------------------


@dataclass
class Result:
    """One scenario's figures (latencies in ms; CPU in % of one core)."""

    scenario: str
    requests: int
    errors: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_percent: dict[str, float] = field(default_factory=dict)
    first_error: str = ""
    #: The runtime server's event-loop lag during the scenario (ms; upper bucket bounds).
    loop_lag_p50_ms: float = float("nan")
    loop_lag_p99_ms: float = float("nan")
    loop_lag_max_ms: float = float("nan")
    client: str = "grpc.aio (Python)"


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    if not sorted_samples:
        return float("nan")
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


class CpuMeter:
    """CPU seconds used by named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._before: dict[str, float] = {}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        """The process's own CPU seconds (all its threads; not its children)."""
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            return t.user + t.system
        return float("nan")

    def start(self) -> None:
        self._before = {name: self._cpu(p) for name, p in self._procs.items()}

    def stop(self, seconds: float) -> dict[str, float]:
        return {name: round(100 * (self._cpu(p) - self._before[name]) / seconds, 1)
                for name, p in self._procs.items()}


async def closed_loop(
    name: str,
    call: Callable[[], Awaitable[None]],
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    meter: CpuMeter,
) -> Result:
    """``concurrency`` tasks call back to back; measure those started after the warm-up."""
    latencies: list[float] = []
    completed = 0
    errors = 0
    first_error = ""
    begin = time.perf_counter()
    window_start = begin + warmup
    window_end = window_start + seconds
    started_meter = False

    async def worker() -> None:
        nonlocal completed, errors, first_error, started_meter
        while True:
            t0 = time.perf_counter()
            if t0 >= window_end:
                return
            if t0 >= window_start and not started_meter:
                started_meter = True
                meter.start()
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            t1 = time.perf_counter()
            if t0 >= window_start:
                latencies.append(t1 - t0)
            if window_start <= t1 <= window_end:
                completed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = meter.stop(seconds) if started_meter else {}
    latencies.sort()
    ms = [x * 1e3 for x in latencies]
    return Result(
        scenario=name,
        requests=completed,
        errors=errors,
        seconds=seconds,
        qps=completed / seconds,
        p50_ms=percentile(ms, 0.50),
        p99_ms=percentile(ms, 0.99),
        mean_ms=sum(ms) / len(ms) if ms else float("nan"),
        cpu_percent=cpu,
        first_error=first_error,
    )


class LoopLag:
    """The runtime server's ``agentforge_event_loop_lag_seconds`` histogram, scraped
    before and after a scenario: quantiles of the lag observed in between."""

    def __init__(self, metrics_port: int | None) -> None:
        self._url = None if metrics_port is None else f"http://127.0.0.1:{metrics_port}/metrics"
        self._before: dict[float, float] = {}

    def _buckets(self) -> dict[float, float]:
        if self._url is None:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        status, text = _http_get(self._url)
        if status != 200:
            return {}
        return {float(s.labels["le"]): s.value for fam in text_string_to_metric_families(text)
                if fam.name == "agentforge_event_loop_lag_seconds"
                for s in fam.samples if s.name.endswith("_bucket")}

    def start(self) -> None:
        self._before = self._buckets()

    def stop(self, result: Result) -> None:
        after = self._buckets()
        delta = sorted((le, after[le] - self._before.get(le, 0.0)) for le in after)
        total = delta[-1][1] if delta else 0.0
        if total <= 0:
            return

        def quantile(q: float) -> float:
            return next(le for le, n in delta if n >= q * total) * 1e3

        result.loop_lag_p50_ms = quantile(0.5)
        result.loop_lag_p99_ms = quantile(0.99)
        result.loop_lag_max_ms = quantile(1.0)


def find_wrk() -> str | None:
    """Debian's ``wrk`` (``make bench`` installs it with apt-get when missing)."""
    import shutil

    return shutil.which("wrk")


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    import re

    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def parse_wrk(output: str, seconds: float) -> tuple[int, int, float, float, float, float]:
    """(requests, errors, qps, p50 ms, p99 ms, mean ms) from ``wrk --latency`` output."""
    import re

    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    qps = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    mean = _wrk_ms(re.search(r"Latency\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p50 = _wrk_ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _wrk_ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return requests, errors, qps, p50, p99, mean


def run_wrk(wrk: str, url: str, token: str, *, concurrency: int, seconds: float, warmup: float,
            meter: CpuMeter) -> Result:
    """REST through Envoy with wrk: ``concurrency`` keep-alive HTTP/1.1 connections on one
    thread, closed loop; a ``warmup`` run first, unmeasured."""
    base = [wrk, "--latency", "-t", "1", "-c", str(concurrency), "-H", f"authorization: Bearer {token}"]
    if warmup > 0:
        subprocess.run([*base, "-d", f"{max(1, round(warmup))}s", url], capture_output=True, check=False)
    import resource

    meter.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([*base, "-d", f"{max(1, round(seconds))}s", url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output, _ = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = meter.stop(seconds)
    cpu["client"] = round(100 * ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / seconds, 1)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {output[-500:]}")
    requests, errors, qps, p50, p99, mean = parse_wrk(output, seconds)
    return Result(scenario="REST via Envoy (wrk)", requests=requests, errors=errors, seconds=seconds, qps=qps,
                  p50_ms=p50, p99_ms=p99, mean_ms=mean, cpu_percent=cpu,
                  first_error="non-2xx responses or socket errors (see wrk)" if errors else "",
                  client="wrk (native, 1 thread)")


def _credentials() -> dict[str, Any]:
    """Call metadata per path: (b) gets what Envoy sends, (c) a bearer token."""
    from services.shared.auth import mint_token
    from services.shared.authz import outgoing_metadata

    return {"bare": (), "runtime": tuple(outgoing_metadata()),
            "edge": (("authorization", f"Bearer {mint_token('viewer', subject='bench', ttl_s=3600)}"),)}


def _grpc_caller(channel: grpc.aio.Channel, md: Any = ()) -> Callable[[], Awaitable[None]]:
    stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
    request = request_response_pb2.GetComponentHealthRequest(name=COMPONENT)

    async def call() -> None:
        await stub.GetComponentHealth(request, timeout=10, metadata=md)

    return call


def _rest_caller(client: httpx.AsyncClient) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        resp = await client.get(REST_PATH)
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        resp.json()

    return call


async def sanity_checks(bare: grpc.aio.Channel, runtime: grpc.aio.Channel, edge: grpc.aio.Channel,
                        rest: httpx.AsyncClient) -> None:
    """Each path answers correctly, and (b) really runs the shared runtime (validation, request id)."""
    request = request_response_pb2.GetComponentHealthRequest(name=COMPONENT)
    md = _credentials()
    for label, channel, key in (("bare", bare, "bare"), ("runtime", runtime, "runtime"), ("envoy grpc", edge, "edge")):
        reply = await monitoring_service_pb2_grpc.MonitoringServiceStub(channel).GetComponentHealth(
            request, timeout=10, metadata=md[key])
        if reply.name != COMPONENT:
            raise RuntimeError(f"{label}: unexpected reply {reply}")
    call = monitoring_service_pb2_grpc.MonitoringServiceStub(runtime).GetComponentHealth(
        request_response_pb2.GetComponentHealthRequest(name="not a component name"), timeout=10,
        metadata=md["runtime"])
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise RuntimeError(f"runtime: invalid request gave {exc.code()}, not INVALID_ARGUMENT") from exc
    else:
        raise RuntimeError("runtime: an invalid request was accepted (no validation interceptor?)")
    ok = await monitoring_service_pb2_grpc.MonitoringServiceStub(runtime).GetComponentHealth(
        request, timeout=10, metadata=md["runtime"]).initial_metadata()
    if not any(k == "x-request-id" for k, _ in ok):
        raise RuntimeError("runtime: no x-request-id in the reply headers (no interceptors?)")
    resp = await rest.get(REST_PATH)
    if resp.status_code != 200 or resp.json().get("name") != COMPONENT:
        raise RuntimeError(f"envoy rest: {resp.status_code} {resp.text[:200]}")
    bad = await rest.get("/v1/components/NOT_VALID")
    if bad.status_code != 400:
        raise RuntimeError(f"envoy rest: an invalid name gave HTTP {bad.status_code}, not 400")


async def run_load(args: argparse.Namespace, ports: dict[str, int], pids: dict[str, int],
                   metrics_port: int | None = None) -> list[Result]:
    options = [("grpc.max_concurrent_streams", 1000)]
    bare = grpc.aio.insecure_channel(f"127.0.0.1:{ports['bare']}", options=options)
    runtime = grpc.aio.insecure_channel(f"127.0.0.1:{ports['runtime']}", options=options)
    untraced = grpc.aio.insecure_channel(f"127.0.0.1:{ports['untraced']}", options=options)
    edge = grpc.aio.insecure_channel(f"127.0.0.1:{ports['edge']}", options=options)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    md = _credentials()
    rest = httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['edge']}", limits=limits,
                             timeout=10, http1=True, http2=False, trust_env=False,
                             headers={"authorization": md["edge"][0][1]})
    try:
        await sanity_checks(bare, runtime, edge, rest)
        scenarios: list[tuple[str, Callable[[], Awaitable[None]] | None, list[str]]] = [
            ("bare gRPC direct", _grpc_caller(bare), ["client", "bare"]),
            ("runtime gRPC direct", _grpc_caller(runtime, md["runtime"]), ["client", "runtime"]),
            ("runtime, tracing off", _grpc_caller(untraced, md["runtime"]), ["client", "untraced"]),
            ("gRPC via Envoy", _grpc_caller(edge, md["edge"]), ["client", "runtime", "envoy"]),
        ]
        wrk = find_wrk()
        if args.rest_client == "httpx":
            scenarios.append(("REST via Envoy (httpx)", _rest_caller(rest), ["client", "runtime", "envoy"]))
        elif wrk is not None:
            scenarios.append(("REST via Envoy (wrk)", None, ["runtime", "envoy"]))
        else:
            print("wrk not found: REST via Envoy not measured (make bench installs it: apt-get install wrk)",
                  file=sys.stderr)
        token = md["edge"][0][1].removeprefix("Bearer ")
        lag = LoopLag(metrics_port)
        rounds: dict[str, list[Result]] = {name: [] for name, _, _ in scenarios}
        for r in range(args.rounds):
            for name, call, who in scenarios:
                meter = CpuMeter({k: pids[k] for k in who})
                lag.start()
                if call is None:
                    assert wrk is not None
                    result = await asyncio.to_thread(
                        run_wrk, wrk, f"http://127.0.0.1:{ports['edge']}{REST_PATH}", token,
                        concurrency=args.concurrency, seconds=args.seconds, warmup=args.warmup, meter=meter)
                else:
                    result = await closed_loop(name, call, concurrency=args.concurrency, seconds=args.seconds,
                                               warmup=args.warmup, meter=meter)
                if "runtime" in who:
                    lag.stop(result)
                rounds[name].append(result)
                print(f"  round {r + 1}/{args.rounds} {name:<20} {result.qps:>8.0f} qps  "
                      f"p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  errors {result.errors}",
                      file=sys.stderr, flush=True)
        # Several rounds: report the round with the median qps of each scenario.
        return [sorted(rs, key=lambda x: x.qps)[len(rs) // 2] for rs in rounds.values()]
    finally:
        await rest.aclose()
        for channel in (bare, runtime, untraced, edge):
            await channel.close()


# -- report ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "httpx": httpx.__version__,
    }


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base and math.isfinite(base) and math.isfinite(x) else "n/a"


def format_table(results: Sequence[Result]) -> str:
    base = results[0]
    head = ["scenario", "qps", "p50 ms", "p99 ms", "qps/bare", "p50/bare", "p99/bare", "errors",
            "CPU% client/server/envoy", "server CPU µs/call (×bare)", "loop lag p99/max ms"]
    rows = []

    def server_cpu(r: Result) -> float:
        return r.cpu_percent.get("bare", r.cpu_percent.get("runtime", r.cpu_percent.get("untraced", float("nan"))))

    def per_call_us(r: Result) -> float:
        """CPU time of the serving process per completed call: what the server costs,
        whatever share of the cores the run got (the throughput columns depend on that)."""
        return server_cpu(r) / 100 / r.qps * 1e6 if r.qps else float("nan")

    for r in results:
        cpu = r.cpu_percent
        envoy = f"{cpu['envoy']:.0f}" if "envoy" in cpu else "-"
        rows.append([r.scenario, f"{r.qps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                     _ratio(r.qps, base.qps), _ratio(r.p50_ms, base.p50_ms), _ratio(r.p99_ms, base.p99_ms),
                     str(r.errors), f"{cpu.get('client', float('nan')):.0f}/{server_cpu(r):.0f}/{envoy}",
                     f"{per_call_us(r):.0f} ({_ratio(per_call_us(r), per_call_us(base))})",
                     "-" if math.isnan(r.loop_lag_p99_ms) else f"{r.loop_lag_p99_ms:g}/{r.loop_lag_max_ms:g}"])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM ends the run through the ``finally`` blocks, so children are cleaned up."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario and round")
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop client tasks")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each scenario")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the four scenarios, interleaved; report each one's median-qps round")
    ap.add_argument("--rest-client", choices=["wrk", "httpx"], default="wrk",
                    help="REST load generator: wrk (native; the default) or the Python httpx client, "
                         "which saturates before the edge does")
    ap.add_argument("--trace-sample", type=float, default=1.0, metavar="RATIO",
                    help="share of calls traced (the runtime's OTEL_TRACES_SAMPLER=parentbased_traceidratio "
                         "and Envoy's random_sampling); default 1.0, every call, as the mesh runs by default")
    ap.add_argument("--json", metavar="OUT", help="also write the results here")
    ap.add_argument("--serve", choices=["bare", "runtime"], help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)

    if args.serve:
        asyncio.run(_serve_bare() if args.serve == "bare" else _serve_runtime())
        return 0
    if not 0 <= args.trace_sample <= 1:
        ap.error("--trace-sample is a share, 0..1")
    if args.seconds <= 0 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 0:
        ap.error("--seconds > 0, --concurrency >= 1, --rounds >= 1, --warmup >= 0")

    info = machine_info()
    print(f"edge_unary: {args.concurrency} concurrent client tasks, {args.seconds:g}s measured "
          f"(+{args.warmup:g}s warm-up) per scenario, {args.rounds} round(s); 127.0.0.1 only")
    print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}); client, servers and Envoy share them, "
          f"so these are whole-box figures; python {info['python']}, grpcio {info['grpcio']}")

    with _sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="edge_unary-") as tmp:
        children = Children(Path(tmp))
        try:
            me = [sys.executable, str(Path(__file__).resolve()), "--serve"]
            bare = children.spawn("bare", [*me, "bare"], ready_line=True)
            sampling = ({} if args.trace_sample >= 1 else
                        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                         "OTEL_TRACES_SAMPLER_ARG": f"{args.trace_sample:g}"})
            runtime = children.spawn("runtime", [*me, "runtime"], ready_line=True, env_extra=sampling)
            # The same runtime with tracing off (OpenTelemetry's own switch): what tracing costs.
            untraced = children.spawn("untraced", [*me, "runtime"], ready_line=True,
                                      env_extra={"OTEL_SDK_DISABLED": "true"})
            runtime_ready = _read_ready(runtime)
            ports = {"bare": _read_ready_port(bare), "runtime": int(runtime_ready["grpc_port"]),
                     "untraced": _read_ready_port(untraced)}
            envoy, ports["edge"], _admin = start_envoy(children, ports["runtime"], args.trace_sample)
            pids = {"client": os.getpid(), "bare": bare.proc.pid, "runtime": runtime.proc.pid,
                    "untraced": untraced.proc.pid,
                    "envoy": envoy.proc.pid}
            results = asyncio.run(run_load(args, ports, pids, runtime_ready.get("metrics_port")))
        except BaseException:
            for child in children.started:
                tail = child.log_tail(10)
                if tail:
                    print(f"--- {child.name} log tail ---\n{tail}", file=sys.stderr)
            raise
        finally:
            children.stop_all()

    print()
    print(format_table(results))
    print("\nratios are against the bare grpc.aio server measured in this run; CPU% is of one core "
          f"(the machine has {info['nproc']}); gRPC clients are grpc.aio in this process, REST's is "
          f"{results[-1].client if results[-1].scenario.startswith('REST') else 'not run'}; loop lag: how late "
          "the runtime server's event loop ran its 100 ms timer (agentforge_event_loop_lag_seconds, bucket bounds)")
    print(f"tracing: {args.trace_sample:g} of calls sampled (runtime and Envoy); 'tracing off' is OTEL_SDK_DISABLED")
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    failed = [r for r in results if r.errors]
    for r in failed:
        print(f"{r.scenario}: {r.errors} errors, first: {r.first_error}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"benchmark": "edge_unary", "machine": info,
             "params": {"seconds": args.seconds, "concurrency": args.concurrency, "warmup": args.warmup,
                        "trace_sample": args.trace_sample,
                        "rounds": args.rounds, "rpc": f"{SERVICE_FULL_NAME}/GetComponentHealth",
                        "rest": f"GET {REST_PATH}"},
             "results": [asdict(r) for r in results]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
