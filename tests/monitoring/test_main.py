"""``python -m services.monitoring`` as its own process, configured from the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from agentforge.monitoring.v1 import health_pb2, monitoring_service_pb2_grpc
from agentforge.monitoring.v1 import request_response_pb2 as rr
from services.monitoring.config import MonitoringConfig, Target
from services.shared.valkey import EmbeddedValkey

from .conftest import ROOT, PeerProcess


def test_config_from_env_reads_targets_and_knobs(tmp_path: Path) -> None:
    config = MonitoringConfig.from_env({
        "AF_TRAINING_ADDR": "127.0.0.1:5001", "AF_TRAINING_METRICS_ADDR": "127.0.0.1:9001",
        "AF_MODEL_ADDR": "127.0.0.1:5002", "AF_MODEL_METRICS_PORT": "9002",
        "AF_FORGE_ADDR": "127.0.0.1:5005", "AF_FORGE_METRICS_PORT": "0",
        "REDIS_URL": "redis://127.0.0.1:6379/0", "AF_DATA_DIR": str(tmp_path),
        "AF_MONITORING_PROBE_INTERVAL_S": "0.5", "AF_MONITORING_MIN_CALLS_FOR_ERROR_RATE": "7",
    })
    assert config.targets == (
        Target("training", "127.0.0.1:5001", "127.0.0.1:9001"),
        Target("model", "127.0.0.1:5002", "127.0.0.1:9002"),
        Target("forge", "127.0.0.1:5005", None),  # port 0 = unknown until the process starts
    )
    assert config.envoy_admin_addr is None and config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.data_dir == tmp_path / "monitoring"
    assert (config.probe_interval_s, config.min_calls_for_error_rate) == (0.5, 7)
    with pytest.raises(ValueError):
        MonitoringConfig.from_env({"AF_MONITORING_PROBE_INTERVAL_S": "0"})


def test_process_prints_ready_line_serves_health_and_stops_on_sigterm(
    tmp_path: Path, valkey: EmbeddedValkey, peer_process: PeerProcess
) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
           "AF_MONITORING_PORT": "0", "AF_MONITORING_METRICS_PORT": "0", "REDIS_URL": valkey.url,
           "AF_DATA_DIR": str(tmp_path), "AF_TRAINING_ADDR": peer_process.address,
           "AF_MONITORING_PROBE_INTERVAL_S": "0.2", "AF_LOG_FORMAT": "text", "AF_MONITORING_GRACE_SECONDS": "1"}
    for name in ("AF_MODEL_ADDR", "AF_REALTIME_ADDR", "AF_MONITORING_ADDR", "AF_FORGE_ADDR", "AF_ENVOY_ADMIN_ADDR"):
        env.pop(name, None)
    log = tmp_path / "monitoring.log"
    proc = subprocess.Popen([sys.executable, "-m", "services.monitoring"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["service"] == "monitoring" and ready["metrics_port"] > 0
        with grpc.insecure_channel(f"127.0.0.1:{ready['grpc_port']}") as channel:
            stub = monitoring_service_pb2_grpc.MonitoringServiceStub(channel)
            deadline = time.monotonic() + 5
            while True:
                health = stub.GetSystemHealth(rr.GetSystemHealthRequest(
                    kinds=[health_pb2.COMPONENT_KIND_SERVICE, health_pb2.COMPONENT_KIND_DEPENDENCY]))
                if health.status == health_pb2.HEALTH_STATUS_SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert health.status == health_pb2.HEALTH_STATUS_SERVING, health
            assert [c.name for c in health.components] == [
                "components/monitoring", "components/training", "components/valkey"]
        assert (tmp_path / "monitoring" / "monitoring.sqlite3").exists()
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("no exit 20 s after SIGTERM; log tail:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
