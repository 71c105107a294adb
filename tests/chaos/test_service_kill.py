"""Chaos: kill -9 each process of a running mesh; the launcher restarts it, clients resume.

One real mesh (embedded Valkey, the five services with one training worker, Envoy) under
the launcher's supervision, with a short restart delay. Every test kills one process
with SIGKILL, waits until the supervisor has it healthy again on the same ports, and
checks what a client sees through the edge: a stream that was open ends (it never
hangs), and a new call with the last cursor resumes exactly after it (no duplicate, no
gap, by ``sequence``); what the service stored is still there.

Valkey killed comes back on its port and the services reconnect to it. The last test
stops a mesh with a REST stream open: the services stop before Envoy, so
the stream still gets its final ``streamEnd`` line.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.launcher.mesh import Mesh, MeshConfig
from services.shared.supervision import RestartPolicy
from tests.support import started_mesh

# Generous per-test limit: the first test also starts the mesh, which takes minutes on a busy
# 2-core machine.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

RESTART = RestartPolicy(burst=5, interval_s=60, delay_s=0.1, max_delay_s=1.0)
MESH_ENV = {
    "AF_TRAINING_HEARTBEAT_INTERVAL_S": "0.5",
    "AF_TRAINING_HEARTBEAT_TIMEOUT_S": "3",
    "AF_TRAINING_TORCH_THREADS": "1",
}
TERMINAL = {"TRAINING_JOB_STATE_SUCCEEDED", "TRAINING_JOB_STATE_FAILED", "TRAINING_JOB_STATE_CANCELLED"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("chaos-mesh")
    config = MeshConfig(training_workers=1, env=dict(MESH_ENV), data_dir=base / "data",
                        run_dir=base / "run", startup_timeout=120, stop_grace=8.0, restart=RESTART)
    with started_mesh(config) as mesh:
        yield mesh


@pytest.fixture
def rest(mesh: Mesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.edge_url, timeout=30) as client:
        yield client


def _retry(call: Any, timeout: float = 30.0) -> httpx.Response:
    """``call()`` until it answers below 500 (the edge says 503 while an upstream is back
    but not yet marked healthy by Envoy's health check)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = call()
            if resp.status_code < 500:
                return resp
        except httpx.TransportError:
            resp = None
        assert time.monotonic() < deadline, f"no answer below 500 within {timeout}s: {resp and resp.text}"
        time.sleep(0.2)


def _kill_and_wait(mesh: Mesh, name: str) -> int:
    first = mesh.status()[name]["pid"]
    mesh.kill_service(name)
    new = mesh.wait_restarted(name, first, timeout=90)  # type: ignore[arg-type]
    assert new != first and mesh.failure is None
    return new


class StreamReader:
    """A REST NDJSON stream read on a thread: every line, and how the body ended."""

    def __init__(self, client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> None:
        self.lines: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(client, path, params), daemon=True)
        self._thread.start()

    def _run(self, client: httpx.Client, path: str, params: dict[str, Any] | None) -> None:
        try:
            with client.stream("GET", path, params=params, timeout=httpx.Timeout(60)) as resp:
                if resp.status_code != 200:
                    self.error = f"{resp.status_code} {resp.read()!r}"
                    return
                for line in resp.iter_lines():
                    if line.strip():
                        self.lines.append(json.loads(line))
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        finally:
            self.ended.set()

    def wait_for(self, count: int, key: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(items := [line[key] for line in self.lines if key in line]) < count:
            assert not self.ended.is_set(), f"stream ended early: {self.error} {self.lines[-3:]}"
            assert time.monotonic() < deadline, f"only {len(items)} {key} lines in {timeout}s"
            time.sleep(0.05)
        return items


def _read_until(client: httpx.Client, path: str, params: dict[str, Any], done: Any,
                timeout: float = 90) -> list[dict[str, Any]]:
    """Lines of a REST stream until ``done(line)`` (or the stream's end)."""
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, params=params, timeout=httpx.Timeout(timeout)) as resp:
        assert resp.status_code == 200, resp.read()
        for raw in resp.iter_lines():
            if raw.strip():
                lines.append(json.loads(raw))
                if done(lines[-1]):
                    break
            assert time.monotonic() < deadline, lines[-3:]
    return lines


def _publish(client: httpx.Client, topic: str, n: int) -> dict[str, Any]:
    resp = {}
    for i in range(n):
        answer = _retry(lambda: client.post(f"/v1/topics/{topic}:publish", json={"data": {"i": i}}))
        assert answer.status_code == 200, answer.text
        resp = answer.json()
    return resp


def test_killed_realtime_is_restarted_and_a_subscriber_resumes_by_cursor(mesh: Mesh, rest: httpx.Client) -> None:
    topic = f"chaos/rt-{uuid.uuid4().hex[:8]}"
    _publish(rest, topic, 3)
    stream = StreamReader(rest, "/v1/topics:subscribe", {"topics": topic, "fromBeginning": "true"})
    before = stream.wait_for(3, "message")
    assert [int(m["sequence"]) for m in before] == [1, 2, 3]
    _kill_and_wait(mesh, "realtime")
    assert stream.ended.wait(15), "an open Subscribe stream outlived its killed service"
    assert not any("streamEnd" in line and line["streamEnd"].get("code", 0) == 0 for line in stream.lines)
    _publish(rest, topic, 2)
    after = _read_until(rest, "/v1/topics:subscribe", {"topics": topic, "cursor": before[-1]["cursor"]},
                        lambda line: "message" in line and int(line["message"]["sequence"]) >= 5)
    resumed = [line["message"] for line in after if "message" in line]
    assert [int(m["sequence"]) for m in resumed] == [4, 5]  # exactly after the cursor
    assert [m["data"]["i"] for m in resumed] == [0, 1]


def test_killed_training_is_restarted_and_a_job_watcher_resumes_by_cursor(mesh: Mesh, rest: httpx.Client) -> None:
    body = {"displayName": "chaos", "spec": {
        "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC", "modulus": 17},
        "model": {"layers": 1, "width": 32, "heads": 2, "contextLength": 4},
        "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3, "warmupSteps": 3},
        "grokfast": {"kind": "GROKFAST_KIND_EMA", "alpha": 0.98, "lamb": 2.0},
        "batchSize": 64, "maxSteps": "200", "evalInterval": "50", "checkpointInterval": "20",
        "progressInterval": "5", "seed": "0", "device": "DEVICE_CPU"}}
    created = _retry(lambda: rest.post("/v1/trainingJobs", json=body))
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    watch = StreamReader(rest, f"/v1/{name}:watch")
    seen = watch.wait_for(3, "progress", timeout=90)
    assert seen
    _kill_and_wait(mesh, "training")
    assert watch.ended.wait(15), "an open watch outlived its killed service"
    events = [line for line in watch.lines if "sequence" in line]
    last = events[-1]
    after = _read_until(rest, f"/v1/{name}:watch", {"cursor": last["cursor"]},
                        lambda line: "streamEnd" in line, timeout=180)
    resumed = [line for line in after if "sequence" in line]
    sequences = [int(e["sequence"]) for e in resumed]
    assert sequences and sequences == list(range(int(last["sequence"]) + 1, sequences[-1] + 1)), sequences[:10]
    assert after[-1]["streamEnd"].get("code", 0) == 0, after[-1]
    job = rest.get(f"/v1/{name}").json()
    assert job["state"] == "TRAINING_JOB_STATE_SUCCEEDED", job


@pytest.mark.parametrize("service", ["model", "forge", "monitoring"])
def test_killed_service_is_restarted_and_serves_what_it_stored(mesh: Mesh, rest: httpx.Client, service: str) -> None:
    if service == "model":
        model_id = f"chaos-{uuid.uuid4().hex[:8]}"
        created = _retry(lambda: rest.post("/v1/models", params={"modelId": model_id}, json={"displayName": "kept"}))
        assert created.status_code == 200, created.text
    _kill_and_wait(mesh, service)
    if service == "model":
        got = _retry(lambda: rest.get(f"/v1/models/{model_id}"))
        assert got.status_code == 200 and got.json()["displayName"] == "kept", got.text
    elif service == "forge":
        got = _retry(lambda: rest.get("/v1/phases"))
        assert got.status_code == 200 and got.json()["phases"], got.text
    else:
        deadline = time.monotonic() + 30
        while True:
            got = _retry(lambda: rest.get("/v1/systemHealth"))
            components = {c["name"]: c["status"] for c in got.json()["components"]}
            if all(components.get(f"components/{n}") == "HEALTH_STATUS_SERVING" for n in mesh.config.services):
                break
            assert time.monotonic() < deadline, components
            time.sleep(0.2)


def test_killed_envoy_is_restarted_and_the_edge_answers(mesh: Mesh, rest: httpx.Client) -> None:
    _kill_and_wait(mesh, "envoy")
    got = _retry(lambda: rest.get("/v1/phases"))
    assert got.status_code == 200, got.text


def test_killed_valkey_comes_back_on_its_port_and_the_services_reconnect(mesh: Mesh, rest: httpx.Client) -> None:
    url = mesh.redis_url
    _kill_and_wait(mesh, "valkey")
    assert mesh.redis_url == url  # the services' REDIS_URL still points at it
    deadline = time.monotonic() + 60
    while True:  # every service sees Valkey again (health follows the dependency)
        got = _retry(lambda: rest.get("/v1/systemHealth"))
        components = {c["name"]: c["status"] for c in got.json()["components"]}
        wanted = [f"components/{n}" for n in (*mesh.config.services, "valkey")]
        if all(components.get(n) == "HEALTH_STATUS_SERVING" for n in wanted):
            break
        assert time.monotonic() < deadline, components
        time.sleep(0.5)
    topic = f"chaos/after-valkey-{uuid.uuid4().hex[:8]}"
    published = _publish(rest, topic, 1)
    assert int(published["sequence"]) == 1
    body = {"displayName": "after-valkey", "spec": {
        "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC", "modulus": 17},
        "model": {"layers": 1, "width": 32, "heads": 2, "contextLength": 4},
        "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3, "warmupSteps": 3},
        "batchSize": 64, "maxSteps": "20", "evalInterval": "10", "checkpointInterval": "10",
        "progressInterval": "5", "seed": "0", "device": "DEVICE_CPU"}}
    created = _retry(lambda: rest.post("/v1/trainingJobs", json=body))
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    deadline = time.monotonic() + 120
    while (job := rest.get(f"/v1/{name}").json())["state"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "TRAINING_JOB_STATE_SUCCEEDED", job


def test_stopping_the_mesh_ends_an_open_rest_stream_with_its_final_status_line(tmp_path: Path) -> None:
    config = MeshConfig(services=("realtime",), data_dir=tmp_path / "data", run_dir=tmp_path / "run",
                        stop_grace=8.0, restart=RESTART)
    with started_mesh(config) as mesh, httpx.Client(base_url=mesh.edge_url, timeout=30) as client:
        stream = StreamReader(client, "/v1/topics:subscribe",
                              {"topics": "chaos/stop", "heartbeatInterval": "1s"})
        stream.wait_for(1, "heartbeat")
        mesh.stop()  # while the stream is open; started_mesh's own stop is then a no-op
        assert stream.ended.wait(15)
    assert stream.error is None, stream.error
    last = stream.lines[-1]
    # The service ended the stream (UNAVAILABLE "server shutting down") while Envoy still ran.
    assert last["streamEnd"]["code"] == 14, last
