"""The launcher against real processes: Valkey, stand-in services on the shared runtime, Envoy."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.launcher.mesh import (
    ALL_SERVICES,
    REPO_ROOT,
    Mesh,
    MeshStartError,
    missing_entry_points,
    unhealthy_upstreams,
)
from services.launcher.pidfile import GroupRecord, MeshAlreadyRunning, PidFile

from .conftest import standin, standin_config, wait_gone

SpawnGroup = Callable[[list[str]], subprocess.Popen[bytes]]


def _health(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return reply.status


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_mesh_comes_up_healthy_and_stop_frees_every_pid_and_port(no_leaks: None, tmp_path: Path) -> None:
    mesh = Mesh(standin_config(tmp_path, ("training", "model")))
    with mesh:
        pids = {pid for _, pid in mesh.children()}
        assert {name for name, _ in mesh.children()} == {"valkey", "training", "model", "envoy"}
        for name, port in mesh.grpc_ports.items():
            assert _health(port) == health_pb2.HealthCheckResponse.SERVING
            assert _health(port, f"agentforge.{name}.v1.{name.capitalize()}Service") == health_pb2.HealthCheckResponse.SERVING
        with urllib.request.urlopen(f"{mesh.admin_url}/ready", timeout=2) as resp:
            assert resp.read().decode().strip() == "LIVE"
        with urllib.request.urlopen(f"{mesh.admin_url}/clusters", timeout=2) as resp:
            assert unhealthy_upstreams(resp.read().decode(), mesh.grpc_ports) == []
        # Through the edge: the stand-in registers no servicer, so the upstream answers
        # UNIMPLEMENTED with its own message (Envoy's "no route" would differ).
        with grpc.insecure_channel(mesh.edge_addr) as channel:
            call = channel.unary_unary("/agentforge.training.v1.TrainingService/GetTrainingJob")
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The contract's environment reached the service.
        env = json.loads((mesh.data_dir / "training" / "env.json").read_text())
        assert env["AF_TRAINING_PORT"] == str(mesh.grpc_ports["training"])
        assert env["AF_MODEL_ADDR"] == f"127.0.0.1:{mesh.grpc_ports['model']}"
        assert env["AF_ENVOY_ADMIN_ADDR"] == f"127.0.0.1:{mesh.admin_port}"
        assert env["AF_ENVOY_EDGE_ADDR"] == f"127.0.0.1:{mesh.edge_port}"
        assert env["AF_DATA_DIR"] == str(mesh.data_dir)
        assert redis.Redis.from_url(env["REDIS_URL"]).ping()
        assert '"event":"ready"' in mesh.log_path("training").read_text()
        assert (mesh.run_dir / "mesh.pid").exists()
        ports = [*mesh.grpc_ports.values(), *mesh.metrics_ports.values(), mesh.edge_port, mesh.admin_port]
        ports.append(int(mesh.redis_url.rsplit(":", 1)[1].split("/")[0]))
    assert wait_gone(pids) == set()
    assert all(_port_free(p) for p in ports), ports
    assert not (tmp_path / "run" / "mesh.pid").exists()
    mesh.stop()  # idempotent


def test_stale_groups_from_a_crashed_run_are_terminated(no_leaks: None, spawn_group: SpawnGroup, tmp_path: Path) -> None:
    # A "crashed" run: its launcher is gone, its service group (leader + a child) lives on.
    crashed = spawn_group([sys.executable, "-c",
                           "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"])
    bystander = spawn_group(["sleep", "60"])  # a live process the pid file does not really describe
    time.sleep(0.3)
    members = {p.pid for p in psutil.Process(crashed.pid).children()} | {crashed.pid}
    dead_launcher = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                   capture_output=True, text=True, check=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    doc = {
        "launcher": {"name": "launcher", "pid": int(dead_launcher.stdout), "create_time": 1.0, "cmdline": ["python"]},
        "groups": [
            {"name": "training", "pid": crashed.pid, "create_time": psutil.Process(crashed.pid).create_time(),
             "cmdline": psutil.Process(crashed.pid).cmdline()},
            {"name": "model", "pid": bystander.pid, "create_time": 12345.0, "cmdline": ["something", "else"]},
        ],
    }
    (run_dir / "mesh.pid").write_text(json.dumps(doc))
    with Mesh(standin_config(tmp_path, with_envoy=False)) as mesh:
        assert [g.name for g in mesh.stale_cleaned] == ["training"]
        assert wait_gone(members, timeout=5) == set()
        assert bystander.poll() is None
        launcher, groups = PidFile(run_dir / "mesh.pid").read()
        assert launcher is not None and launcher.pid == os.getpid()
        assert {g.name for g in groups} == {"valkey", "training"}


def test_pid_file_of_a_live_launcher_is_refused(no_leaks: None, spawn_group: SpawnGroup, tmp_path: Path) -> None:
    other = spawn_group(["sleep", "60"])
    time.sleep(0.1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    launcher = dataclasses.asdict(GroupRecord.of("launcher", other.pid))
    (run_dir / "mesh.pid").write_text(json.dumps({"launcher": launcher, "groups": []}))
    with pytest.raises(MeshAlreadyRunning, match=f"pid {other.pid}"):
        Mesh(standin_config(tmp_path, with_envoy=False)).start()
    assert other.poll() is None
    assert (run_dir / "mesh.pid").exists()


def test_busy_edge_port_fails_naming_the_port_and_its_holder(no_leaks: None, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(MeshStartError, match=f"edge port {port} is already in use") as err:
            Mesh(standin_config(tmp_path, edge_port=port)).start()
    holder = f"pid {os.getpid()}"
    # psutil can name the holder when it may read this process's sockets (it can: ours).
    assert holder in str(err.value)


def test_service_crashing_at_startup_reports_its_log_tail(no_leaks: None, tmp_path: Path) -> None:
    config = standin_config(tmp_path, ("training", "model"), commands={"model": standin("model", "--crash")})
    mesh = Mesh(config)
    with pytest.raises(MeshStartError) as err:
        mesh.start()
    message = str(err.value)
    assert "model exited before it was ready (exit code 3)" in message
    assert "deliberate crash" in message
    assert list(mesh.children()) == []
    assert not (tmp_path / "run" / "mesh.pid").exists()


def test_missing_entry_points_are_named(tmp_path: Path) -> None:
    (tmp_path / "services" / "model").mkdir(parents=True)
    (tmp_path / "services" / "model" / "__main__.py").write_text("")
    assert missing_entry_points(["training", "model"], root=tmp_path) == ["services/training/__main__.py"]
    assert missing_entry_points(ALL_SERVICES) == []


def test_kill_and_restart_service_keeps_its_port(no_leaks: None, tmp_path: Path) -> None:
    with Mesh(standin_config(tmp_path, with_envoy=False)) as mesh:
        port = mesh.grpc_ports["training"]
        first = mesh.process("training").pid
        mesh.kill_service("training")
        assert mesh.process("training").poll() == -signal.SIGKILL
        mesh.restart_service("training")
        assert mesh.process("training").pid != first
        assert _health(port) == health_pb2.HealthCheckResponse.SERVING


def test_unhealthy_upstreams_reads_envoy_cluster_flags() -> None:
    text = "\n".join([
        "training::127.0.0.1:5001::health_flags::healthy",
        "training::127.0.0.1:5001::cx_active::1",
        "model::127.0.0.1:5002::health_flags::/failed_active_hc",
    ])
    assert unhealthy_upstreams(text, {"training": 5001, "model": 5002, "forge": 5003}) == ["model", "forge"]


@pytest.mark.skipif(not (REPO_ROOT / "services" / "realtime" / "__main__.py").exists(), reason="no realtime yet")
def test_cli_up_serves_until_sigterm_then_stops_everything(no_leaks: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.launcher", "up", "--edge-port", "0", "--services", "realtime",
         "--run-dir", str(run_dir), "--data-dir", str(tmp_path / "data")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen' / 'python'}"},
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line or "failed" in line:
                break
        output = "".join(lines)
        assert "mesh is up:" in output, output
        assert "edge REST / grpc-web  http://127.0.0.1:" in output
        assert "realtime" in output and "metrics http://127.0.0.1:" in output
        _, groups = PidFile(run_dir / "mesh.pid").read()
        pids = {g.pid for g in groups}
        assert {g.name for g in groups} == {"valkey", "realtime", "envoy"}
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
        assert wait_gone(pids) == set()
        assert not (run_dir / "mesh.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
