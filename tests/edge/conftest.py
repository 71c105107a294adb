"""A real Envoy in front of a real gRPC server, for the edge tests.

Until the launcher (services/launcher/mesh.py) runs the five services, the upstream is
the TEST DOUBLE in :mod:`tests.edge.upstream_double`: one grpc.aio process (shared
runtime) serving all five service names, with all five Envoy clusters pointed at it.

Tests use only the ``edge`` fixture (an :class:`EdgeTarget`): to run them against the
real mesh, make ``edge`` return ``EdgeTarget`` built from the ``mesh`` fixture
(``mesh.edge_port``, ``mesh.admin_port``, and a ``signal_monitoring`` that signals
``mesh.process("monitoring")``); ``private_edge`` likewise for tests that kill the
upstream.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from services.launcher.envoy_config import SERVICES, EdgeLimits, default_descriptor_path, render_envoy_config

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / ".venv" / "bin" / "envoy"
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class EdgeTarget:
    """Where the edge under test listens, and how to disturb what is behind it."""

    port: int
    admin_port: int
    #: Sends a signal to the process serving the monitoring cluster.
    signal_monitoring: Callable[[int], None]
    #: Seconds the monitoring process drains open RPCs after SIGTERM.
    grace_seconds: float
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _read_ready_line(proc: subprocess.Popen[bytes], stdout: IO[bytes], log: Path) -> dict[str, object]:
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        buf = b""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"upstream exited with {proc.returncode}:\n{_tail(log)}")
            if sel.select(0.1):
                chunk = os.read(stdout.fileno(), 4096)
                buf += chunk
                for line in buf.splitlines():
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(event, dict) and event.get("event") == "ready":
                        return event
    raise RuntimeError(f"upstream printed no ready line in {START_TIMEOUT}s:\n{_tail(log)}")


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_edge_ready(admin_url: str, clusters: tuple[str, ...], proc: subprocess.Popen[bytes],
                    log: Path) -> None:
    """Admin ``/ready`` says LIVE and every cluster has a healthy host."""
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {proc.returncode}:\n{_tail(log)}")
        try:
            status, body = _http_get(f"{admin_url}/ready")
            if status == 200 and body.strip() == "LIVE":
                _, text = _http_get(f"{admin_url}/clusters")
                healthy = {
                    line.split("::", 1)[0]
                    for line in text.splitlines()
                    if "::health_flags::healthy" in line
                }
                if set(clusters) <= healthy:
                    return
                last = f"healthy clusters: {sorted(healthy)}"
            else:
                last = f"/ready: {status} {body.strip()}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"envoy not ready in {START_TIMEOUT}s ({last}):\n{_tail(log)}")


def start_edge_stack(stack: ExitStack, workdir: Path, grace_seconds: float = 3.0, *,
                     limits: EdgeLimits | None = None, upstream_env: dict[str, str] | None = None) -> EdgeTarget:
    """Start the upstream double and Envoy; ``stack`` stops both (Envoy first).

    ``limits``: the edge's resource limits (small ones for the limit tests);
    ``upstream_env``: more environment for the double (e.g. ``AF_EDGE_DOUBLE_PERIOD``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **(upstream_env or {}),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
        "AF_PORT": "0",
        "AF_HOST": "127.0.0.1",
        "AF_METRICS_PORT": "-1",
        "AF_GRACE_SECONDS": str(grace_seconds),
        "AF_LOG_FORMAT": "json",
    }
    upstream_log = workdir / "upstream.log"
    with upstream_log.open("wb") as err:
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.edge.upstream_double"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
        )
    stack.callback(_stop, upstream)
    assert upstream.stdout is not None
    stack.callback(upstream.stdout.close)
    ready = _read_ready_line(upstream, upstream.stdout, upstream_log)
    grpc_port = int(ready["grpc_port"])  # type: ignore[arg-type]

    edge_port, admin_port = free_port(), free_port()
    config = workdir / "envoy.yaml"
    config.write_text(render_envoy_config(
        listen_port=edge_port,
        admin_port=admin_port,
        upstreams={name: ("127.0.0.1", grpc_port) for name in SERVICES},
        descriptor_path=default_descriptor_path(),
        limits=limits,
    ))
    envoy_log = workdir / "envoy.log"
    with envoy_log.open("wb") as out:
        envoy = subprocess.Popen(
            [str(ENVOY), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
             "--log-level", "warning"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stack.callback(_stop, envoy)
    wait_edge_ready(f"http://127.0.0.1:{admin_port}", SERVICES, envoy, envoy_log)

    def signal_monitoring(sig: int) -> None:
        upstream.send_signal(sig)

    return EdgeTarget(edge_port, admin_port, signal_monitoring, grace_seconds)


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeTarget]:
    """The edge shared by the tests that leave the upstream alone."""
    with ExitStack() as stack:
        yield start_edge_stack(stack, tmp_path_factory.mktemp("edge"))


@pytest.fixture
def private_edge(tmp_path: Path) -> Iterator[EdgeTarget]:
    """An edge with its own upstream, for tests that signal or kill it."""
    with ExitStack() as stack:
        yield start_edge_stack(stack, tmp_path / "edge")
