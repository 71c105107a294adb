"""Fixtures for the shared runtime: an in-process echo server and an echo process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from services.shared.config import ServerConfig
from services.shared.server import Service, build_server

from .echo_service import EchoServicer, method

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class EchoServer:
    service: Service
    servicer: EchoServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.service.port}"


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    """The echo service in this process on [::]:0 with metrics on a free port."""
    servicer = EchoServicer()
    service = await build_server(ServerConfig(grace_seconds=0.5), "echo", servicer.register)
    servicer.port = service.port
    try:
        yield EchoServer(service, servicer)
    finally:
        await service.shutdown(0)


@pytest.fixture
async def channel(echo_server: EchoServer) -> AsyncIterator[grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel(echo_server.target)
    try:
        yield ch
    finally:
        await ch.close()


def rpc(channel: grpc.aio.Channel, kind: str, name: str, req: Any, resp: Any) -> Any:
    """A multicallable for ``test.v1.Echo/<name>``; kind is uu/us/su/ss."""
    factory = {"uu": channel.unary_unary, "us": channel.unary_stream,
               "su": channel.stream_unary, "ss": channel.stream_stream}[kind]
    return factory(method(name), request_serializer=req.SerializeToString,
                   response_deserializer=resp.FromString)


@dataclass
class EchoProcess:
    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ready['grpc_port']}"


@pytest.fixture
def echo_process() -> Iterator[EchoProcess]:
    """The echo service as a real process (grace 1.5 s), after its ready line."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
           "AF_ECHO_GRACE_SECONDS": "1.5", "AF_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "shared" / "echo_service.py")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"echo service exited before ready: rc={proc.wait(5)}")
        ready = json.loads(line)
        assert ready["event"] == "ready"
        yield EchoProcess(proc, ready)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
