"""Supervision: the launcher restarts what crashed, gives up on a crash loop, and its stop
ends everything it ever started (restarts, leftovers, hand-started copies)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.launcher.control import ControlError, request
from services.launcher.mesh import REPO_ROOT, Mesh
from services.launcher.pidfile import PidFile
from services.shared.supervision import RestartBudget, RestartPolicy

from .conftest import standin, standin_config, wait_gone

SpawnGroup = Callable[[list[str]], subprocess.Popen[bytes]]
FAST = RestartPolicy(burst=3, interval_s=30.0, delay_s=0.05, max_delay_s=0.2)


def _serving(port: int) -> bool:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _recorded(mesh: Mesh) -> dict[str, int]:
    _, groups = PidFile(mesh.run_dir / "mesh.pid").read()
    return {g.name: g.pid for g in groups}


# -- the policy -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_delay_doubles_up_to_the_cap_and_the_burst_limit_gives_up() -> None:
    clock = FakeClock()
    budget = RestartBudget(RestartPolicy(burst=4, interval_s=60, delay_s=0.5, max_delay_s=1.5), clock)
    delays = []
    for _ in range(4):
        delays.append(budget.crashed())
        clock.now += 1
    assert delays == [0.5, 1.0, 1.5, 1.5]
    assert budget.crashed() is None  # the 5th crash within 60 s: restart number 5 > burst 4
    assert "5 crashes within 60 s (limit: 4 restarts)" == budget.describe()


def test_crashes_older_than_the_window_are_forgotten() -> None:
    clock = FakeClock()
    budget = RestartBudget(RestartPolicy(burst=2, interval_s=10, delay_s=1, max_delay_s=8), clock)
    assert budget.crashed() == 1
    assert budget.crashed() == 2
    clock.now += 10.5  # both crashes left the window
    assert budget.recent == 0
    assert budget.crashed() == 1  # a fresh start: the first delay again, no give-up


def test_policy_reads_af_restart_variables_and_names_bad_ones() -> None:
    policy = RestartPolicy.from_env(environ={"AF_RESTART_BURST": "7", "AF_RESTART_INTERVAL_S": "120",
                                             "AF_RESTART_DELAY_S": "0.1", "AF_RESTART_MAX_DELAY_S": "3"})
    assert policy == RestartPolicy(burst=7, interval_s=120, delay_s=0.1, max_delay_s=3)
    assert RestartPolicy.from_env(environ={}) == RestartPolicy()
    with pytest.raises(ValueError, match="AF_RESTART_BURST"):
        RestartPolicy.from_env(environ={"AF_RESTART_BURST": "many"})
    with pytest.raises(ValueError, match="AF_RESTART_.*burst must be >= 1"):
        RestartPolicy.from_env(environ={"AF_RESTART_BURST": "0"})
    with pytest.raises(ValueError, match="AF_TRAINING_WORKER_RESTART_DELAY_S"):
        RestartPolicy.from_env("training_worker_restart", {"AF_TRAINING_WORKER_RESTART_DELAY_S": "x"})


# -- the launcher -----------------------------------------------------------------------


def test_killed_service_is_restarted_on_its_port_and_the_pid_file_follows(no_leaks: None, tmp_path: Path) -> None:
    config = standin_config(tmp_path, ("training",), with_envoy=False, restart=FAST,
                            commands={"training": standin("training", "--child")})
    with Mesh(config) as mesh:
        port = mesh.grpc_ports["training"]
        first = mesh.process("training").pid
        first_child = int((mesh.data_dir / "training" / "child.pid").read_text())
        assert _recorded(mesh)["training"] == first
        mesh.kill_service("training")  # kill -9 of the leader only; its child stays in the group
        new = mesh.wait_restarted("training", first, timeout=30)
        assert new != first and _serving(port)
        assert mesh.grpc_ports["training"] == port
        assert _recorded(mesh)["training"] == new
        # Like systemd's control group: what the dead leader left is ended before the restart.
        assert wait_gone({first_child}, timeout=5) == set()
        assert mesh.restarts["training"] == 1 and mesh.failure is None
        log = (mesh.log_dir / "launcher.log").read_text()
        assert "training exited (code -9); restarting in 0.1 s" in log or "training exited (code -9); restarting in 0.0 s" in log, log
        assert f"training restarted (pid {new})" in log
        pids = {new, int((mesh.data_dir / "training" / "child.pid").read_text())}
    assert wait_gone(pids) == set()


def test_a_crash_loop_makes_the_launcher_give_up_and_say_why(no_leaks: None, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    config = standin_config(tmp_path, ("training", "model"), with_envoy=False, restart=FAST,
                            commands={"training": standin("training", "--crash-if", str(broken))})
    with Mesh(config) as mesh:
        broken.write_text("from now on the service crashes at start")
        mesh.kill_service("training")
        failure = mesh.wait_failure(timeout=60)
        assert failure is not None, mesh.status()
        assert "training exited (code 3) and crashed too often: 4 crashes within 30 s (limit: 3 restarts)" in failure
        assert "giving up" in failure
        assert mesh.restarts["training"] == 0  # every restart attempt crashed before it was healthy
        assert mesh.status()["training"]["held"] is True
        assert mesh.status()["model"]["running"] is True  # the others are left alone
        time.sleep(0.5)
        assert not mesh.status()["training"]["running"]  # and it is not restarted any more


def test_killed_valkey_comes_back_on_the_same_port(no_leaks: None, tmp_path: Path) -> None:
    with Mesh(standin_config(tmp_path, ("training",), with_envoy=False, restart=FAST)) as mesh:
        url = mesh.redis_url
        client = redis.Redis.from_url(url)
        client.set("before", "1")
        first = mesh.status()["valkey"]["pid"]
        mesh.kill_service("valkey")
        new = mesh.wait_restarted("valkey", first, timeout=30)  # type: ignore[arg-type]
        assert mesh.redis_url == url
        assert redis.Redis.from_url(url).ping()
        assert redis.Redis.from_url(url).get("before") is None  # no persistence: a real restart
        assert _recorded(mesh)["valkey"] == new


def test_killed_envoy_is_restarted_and_the_edge_answers_again(no_leaks: None, tmp_path: Path) -> None:
    with Mesh(standin_config(tmp_path, ("training",), restart=FAST)) as mesh:
        first = mesh.process("envoy").pid
        mesh.kill_service("envoy")
        new = mesh.wait_restarted("envoy", first, timeout=60)
        assert _recorded(mesh)["envoy"] == new
        with grpc.insecure_channel(mesh.edge_addr) as channel:
            call = channel.unary_unary("/agentforge.training.v1.TrainingService/GetTrainingJob")
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=10, wait_for_ready=True)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # the stand-in answered through Envoy


def test_stop_ends_a_copy_of_a_service_started_by_hand(no_leaks: None, spawn_group: SpawnGroup, tmp_path: Path) -> None:
    with Mesh(standin_config(tmp_path, ("training",), with_envoy=False, restart=FAST)) as mesh:
        port = mesh.grpc_ports["training"]
        spec_env = json.loads((mesh.data_dir / "training" / "env.json").read_text())
        mesh.kill_service("training", restart=False)
        # Someone restarts it by hand, in their own session, with the service's environment.
        by_hand = subprocess.Popen(standin("training"), env={**os.environ, **spec_env}, cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _serving(port):
            assert by_hand.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    # The launcher never started it, but it held the service's port with its command line.
    assert wait_gone({by_hand.pid}) == set()
    by_hand.wait(5)


def test_a_restart_stops_a_hand_started_copy_holding_the_port(no_leaks: None, tmp_path: Path) -> None:
    with Mesh(standin_config(tmp_path, ("training",), with_envoy=False, restart=FAST)) as mesh:
        port = mesh.grpc_ports["training"]
        spec_env = json.loads((mesh.data_dir / "training" / "env.json").read_text())
        mesh.kill_service("training", restart=False)
        by_hand = subprocess.Popen(standin("training"), env={**os.environ, **spec_env}, cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _serving(port):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        new = mesh.restart_service("training")
        assert by_hand.wait(10) is not None
        assert mesh.process("training").pid == new and _serving(port)


def test_restart_and_status_through_the_control_socket(no_leaks: None, tmp_path: Path) -> None:
    # A deep run dir: longer than a Unix socket address allows.
    run_dir = tmp_path / ("d" * 60) / ("e" * 60) / "run"
    config = dataclasses.replace(standin_config(tmp_path, ("training", "model"), with_envoy=False, restart=FAST),
                                 run_dir=run_dir)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen' / 'python'}"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.launcher", *args, "--run-dir", str(run_dir)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)

    with Mesh(config) as mesh:
        first = mesh.process("model").pid
        done = cli("restart", "model")
        assert done.returncode == 0, done.stderr
        new = mesh.process("model").pid
        assert done.stdout.strip() == f"model restarted (pid {new})" and new != first
        assert _recorded(mesh)["model"] == new and _serving(mesh.grpc_ports["model"])
        assert wait_gone({first}) == set()
        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert re.search(rf"^model +pid {new}  running  restarts 1$", status.stdout, re.M), status.stdout
        unknown = cli("restart", "trainer")
        assert unknown.returncode == 1
        assert "no process 'trainer' in this mesh; known: valkey, training, model" in unknown.stderr
        assert request(run_dir, {"command": "status"})["status"]["training"]["restarts"] == 0
        with pytest.raises(ControlError, match="unknown command"):
            request(run_dir, {"command": "reboot"})
    gone = cli("restart", "model")
    assert gone.returncode == 1 and "no mesh is running with run dir" in gone.stderr


def test_cli_up_exits_1_when_a_service_crash_loops(no_leaks: None, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    broken = run_dir / "logs" / "realtime.log"  # exists as soon as the launcher starts realtime
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen' / 'python'}",
           "AF_RESTART_BURST": "1", "AF_RESTART_DELAY_S": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.launcher", "up", "--edge-port", "0", "--services", "realtime",
         "--run-dir", str(run_dir), "--data-dir", str(tmp_path / "data")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line or "failed" in line:
                break
        assert "mesh is up:" in "".join(lines), "".join(lines)
        _, groups = PidFile(run_dir / "mesh.pid").read()
        pids = {g.pid for g in groups}
        realtime = next(g.pid for g in groups if g.name == "realtime")
        assert broken.exists()
        # Two crashes: the first is restarted, the second is over the limit (burst 1).
        os.killpg(realtime, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            _, now = PidFile(run_dir / "mesh.pid").read()
            again = next((g.pid for g in now if g.name == "realtime"), None)
            if again not in (None, realtime):
                break
            assert time.monotonic() < deadline, "realtime was not restarted"
            time.sleep(0.1)
        pids.add(again)
        os.killpg(again, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 1, rest
        assert "realtime exited (code -9) and crashed too often" in rest
        assert "stopped" in rest
        assert wait_gone(pids | {again}) == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_restarted_processes_die_with_a_killed_launcher(no_leaks: None, tmp_path: Path) -> None:
    # Restarts happen on the supervisor thread; their parent-death signal must still fire
    # when the launcher dies (kill -9 leaves it no chance to stop anything itself).
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen' / 'python'}", "AF_RESTART_DELAY_S": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.launcher", "up", "--edge-port", "0", "--services", "realtime",
         "--run-dir", str(run_dir), "--data-dir", str(tmp_path / "data")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C stops everything" in line or "failed" in line:
                break
        _, groups = PidFile(run_dir / "mesh.pid").read()
        first = {g.name: g.pid for g in groups}
        for name in ("realtime", "valkey"):
            os.killpg(first[name], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            _, now = PidFile(run_dir / "mesh.pid").read()
            pids = {g.name: g.pid for g in now}
            if all(pids.get(n) not in (None, first[n]) for n in ("realtime", "valkey")):
                break
            assert time.monotonic() < deadline, f"not restarted: {pids}"
            time.sleep(0.1)
        proc.kill()
        proc.wait(10)
        assert wait_gone(set(pids.values()) | set(first.values()), timeout=15) == set(), pids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_restart_on_request_works_for_valkey_and_envoy_too(no_leaks: None, tmp_path: Path) -> None:
    with Mesh(standin_config(tmp_path, ("training",), restart=FAST)) as mesh:
        url = mesh.redis_url
        old_valkey, old_envoy = mesh.status()["valkey"]["pid"], mesh.process("envoy").pid
        new_valkey = mesh.restart_service("valkey")
        assert new_valkey != old_valkey and mesh.redis_url == url and redis.Redis.from_url(url).ping()
        new_envoy = mesh.restart_service("envoy")
        assert new_envoy != old_envoy
        with urllib.request.urlopen(f"{mesh.admin_url}/ready", timeout=5) as resp:
            assert resp.read().decode().strip() == "LIVE"
        assert _recorded(mesh)["valkey"] == new_valkey and _recorded(mesh)["envoy"] == new_envoy
        assert mesh.restarts["valkey"] == 1 and mesh.restarts["envoy"] == 1
        assert wait_gone({old_valkey, old_envoy}) == set()  # type: ignore[arg-type]
        with pytest.raises(KeyError, match="no process 'redis'"):
            mesh.restart_service("redis")
