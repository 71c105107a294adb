"""Fixtures: real peer servers (in process and as a child process) and the monitoring service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc.aio
import pytest

from agentforge.monitoring.v1 import monitoring_service_pb2_grpc
from services.monitoring.config import MonitoringConfig, Target
from services.monitoring.server import MonitoringServer, create_server
from services.shared.config import ServerConfig
from services.shared.server import Service, build_server

ROOT = Path(__file__).resolve().parents[2]


class PeerProcess:
    """``tests.monitoring.peer_main`` as a child process; restartable on its port."""

    def __init__(self) -> None:
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> PeerProcess:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
               "AF_LOG_FORMAT": "text", "AF_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.monitoring.peer_main", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited with {self.proc.wait()}")
        self.port = json.loads(line)["grpc_port"]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def peer_process() -> Iterator[PeerProcess]:
    peer = PeerProcess().start()
    try:
        yield peer
    finally:
        peer.close()


async def start_peer(port: int = 0) -> Service:
    """An in-process peer: the shared runtime with only health (no metrics)."""
    return await build_server(
        ServerConfig(host="127.0.0.1", port=port, metrics_port=-1, grace_seconds=0), "peer", lambda s: []
    )


@pytest.fixture
async def peer_inproc() -> AsyncIterator[list[Service]]:
    """A list holding the current in-process peer (tests may replace it on restart)."""
    holder = [await start_peer()]
    try:
        yield holder
    finally:
        for service in holder:
            # A grace period, so open health Watch streams end cleanly first (see the report:
            # cancelling stream handlers with grace 0 can crash grpc in the shared LoggingInterceptor).
            await service.shutdown(1.0)


FAST = dict(probe_interval_s=0.2, probe_timeout_s=0.5, reconnect_initial_s=0.05, reconnect_max_s=0.3,
            alert_eval_interval_s=0.2, publish_timeout_s=0.3)




@pytest.fixture
async def monitoring_factory(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """``await make(targets=..., redis_url=..., **knobs)`` → a started MonitoringServer."""
    started: list[MonitoringServer] = []

    async def make(*, targets: tuple[Target, ...] = (), redis_url: str | None = None, **knobs: object) -> MonitoringServer:
        config = MonitoringConfig(targets=targets, redis_url=redis_url, data_dir=tmp_path / "monitoring",
                                  **{**FAST, **knobs})  # type: ignore[arg-type]
        server = await create_server(config, ServerConfig(host="127.0.0.1", port=0, grace_seconds=0.5))
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop(1.0)


@pytest.fixture
async def stub_factory() -> AsyncIterator[Callable[[int], monitoring_service_pb2_grpc.MonitoringServiceStub]]:
    channels: list[grpc.aio.Channel] = []

    def make(port: int) -> monitoring_service_pb2_grpc.MonitoringServiceStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return monitoring_service_pb2_grpc.MonitoringServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close()
