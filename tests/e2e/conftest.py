"""The real mesh for end-to-end tests, and clients that reach it only through Envoy.

``mesh`` (session scope) starts embedded Valkey, the five real services (training with
two ``spawn`` workers) and Envoy once for the e2e session, via the launcher
(:class:`services.launcher.mesh.Mesh`), and stops them all at the end. A mesh that does
not come up within :data:`START_TIMEOUT` fails every e2e test at once with the failing
process's log tail (``MeshStartError``). Logs stay under pytest's basetemp
(``.../e2e-mesh*/logs/<name>.log``) for post-mortems.

Clients, all to ``127.0.0.1:<edge port>``:

- ``rest`` — an ``httpx.Client`` on ``mesh.edge_url`` (REST/JSON transcoding);
  :func:`ndjson` reads a REST server stream (one JSON object per line, the last one
  ``{"streamEnd": {...}}``).
- ``channel`` — a ``grpc.aio`` channel for native gRPC through the edge (generated stubs).
- :func:`grpc_web_call` / :func:`grpc_web_frames` — binary grpc-web over HTTP/1.1.

Training jobs are kept tiny (:func:`tiny_job`: x·y mod 17, width 32, 2 heads, 1 layer,
batch 64) so the suite runs in a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import pytest_asyncio

from services.launcher.mesh import Mesh, MeshConfig
from tests.support import grpc_web_frame, grpc_web_frames, started_mesh

__all__ = [
    "GRPCURL",
    "ORIGIN",
    "START_TIMEOUT",
    "grpc_web_call",
    "grpc_web_frames",
    "job_id",
    "ndjson",
    "step_of",
    "tiny_job",
    "wait_job",
]

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
ORIGIN = "http://localhost:5173"
#: Seconds for the whole mesh to come up (Valkey, five services, Envoy healthy).
START_TIMEOUT = 90.0
#: Environment for the e2e mesh: fast heartbeats so a killed worker's job is reclaimed
#: within seconds, one torch thread per worker (2 workers on 2 cores), spans written often.
MESH_ENV = {
    "AF_TRAINING_HEARTBEAT_INTERVAL_S": "0.5",
    "AF_TRAINING_HEARTBEAT_TIMEOUT_S": "3",
    "AF_TRAINING_TORCH_THREADS": "1",
    # Spans reach the trace files within 0.2 s (tests/e2e/test_tracing_e2e.py).
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The whole mesh, started once for the e2e session and stopped at its end."""
    base = tmp_path_factory.mktemp("e2e-mesh")
    config = MeshConfig(
        training_workers=2,
        env=dict(MESH_ENV),
        data_dir=base / "data",
        log_dir=base / "logs",
        run_dir=base / "run",
        startup_timeout=START_TIMEOUT,
        stop_grace=8.0,
    )
    with started_mesh(config, logs=base / "logs") as instance:
        yield instance


@pytest.fixture
def rest(mesh: Mesh) -> Iterator[httpx.Client]:
    """REST/JSON through Envoy."""
    with httpx.Client(base_url=mesh.edge_url, timeout=30) as client:
        yield client


@pytest_asyncio.fixture
async def channel(mesh: Mesh) -> AsyncIterator[grpc.aio.Channel]:
    """Native gRPC (h2c) through Envoy."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.edge_port}") as ch:
        yield ch


# --- REST ---------------------------------------------------------------------------


def ndjson(client: httpx.Client, path: str, *, params: Any = None, timeout: float = 90.0,
           until: Callable[[dict[str, Any]], bool] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """GET a REST server stream: ``(http status, one dict per NDJSON line)``.

    Reads to the end of the body (the last line is ``streamEnd``), or stops after the
    first line for which ``until`` is true. A non-200 answer is one JSON Status object.
    """
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, params=params, timeout=httpx.Timeout(timeout)) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp.status_code, [resp.json()]
        try:
            for line in resp.iter_lines():
                assert time.monotonic() < deadline, f"stream {path} still open after {timeout}s: {lines[-3:]}"
                if not line.strip():
                    continue
                lines.append(json.loads(line))
                if until is not None and until(lines[-1]):
                    break
        except httpx.ReadTimeout:
            pytest.fail(f"stream {path}: nothing for {timeout}s; last lines: {lines[-3:]}", pytrace=False)
    return 200, lines


def job_id(name: str) -> str:
    return name.rpartition("/")[2]


def tiny_job(**spec_overrides: Any) -> dict[str, Any]:
    """A ``TrainingJob`` JSON body: x·y mod 17 on a 1-layer width-32 decoder, 40 steps."""
    spec: dict[str, Any] = {
        "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC", "modulus": 17},
        "model": {"layers": 1, "width": 32, "heads": 2, "contextLength": 4},
        "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3, "warmupSteps": 3},
        "grokfast": {"kind": "GROKFAST_KIND_EMA", "alpha": 0.98, "lamb": 2.0},
        "batchSize": 64,
        "maxSteps": "40",
        "evalInterval": "10",
        "checkpointInterval": "10",
        "progressInterval": "1",
        "seed": "0",
        "device": "DEVICE_CPU",
    }
    spec.update(spec_overrides)
    return {"displayName": f"e2e-{uuid.uuid4().hex[:6]}", "spec": spec}


def wait_job(client: httpx.Client, name: str, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 60.0) -> dict[str, Any]:
    """Poll ``GET /v1/{name}`` until ``predicate(job)``; the job JSON."""
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get(f"/v1/{name}")
        assert resp.status_code == 200, resp.text
        job = resp.json()
        if predicate(job):
            return job
        assert time.monotonic() < deadline, f"{name} never reached the condition; last: {job}"
        time.sleep(0.05)


def step_of(job: dict[str, Any]) -> int:
    return int(job.get("progress", {}).get("step", 0))


# --- grpc-web ------------------------------------------------------------------------


def grpc_web_call(client: httpx.Client, path: str, message: bytes) -> httpx.Response:
    """POST one binary grpc-web request (``application/grpc-web+proto``) to ``/pkg.Svc/Method``."""
    return client.post(
        path,
        content=grpc_web_frame(message),
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                 "x-user-agent": "grpc-web-javascript/0.1", "origin": ORIGIN},
    )


