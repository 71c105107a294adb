"""Monitoring answers the edge's reflection and health for the whole mesh (real servers)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.launcher.envoy_config import SERVICES, default_descriptor_path, render_envoy_config
from services.monitoring.config import Target
from services.monitoring.health import Change, Component, Kind, Status
from services.monitoring.mesh_api import API_SERVICES, HealthMirror
from services.monitoring.server import MonitoringServer
from services.shared.health import HealthService

from .conftest import ROOT
from tests.auth import grpcurl_auth

ENVOY = ROOT / ".venv" / "bin" / "envoy"
GRPCURL = ROOT / ".venv" / "bin" / "grpcurl"
TRAINING = API_SERVICES["training"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _reflect(port: int, *requests: reflection_pb2.ServerReflectionRequest) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter(requests))
        return [response async for response in call]


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> int | grpc.StatusCode:
    try:
        return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)).status
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def _eventually(stub: health_pb2_grpc.HealthStub, service: str, want: object, within: float) -> None:
    deadline = time.monotonic() + within
    got = await _check(stub, service)
    while got != want and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        got = await _check(stub, service)
    assert got == want, f"{service}: {got} after {within}s, wanted {want}"


async def test_reflection_lists_and_describes_every_mesh_service(monitoring_factory: Any) -> None:
    mon: MonitoringServer = await monitoring_factory()
    listed, training_file = await _reflect(
        mon.port,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=TRAINING),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert set(API_SERVICES.values()) <= names
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in training_file.file_descriptor_response.file_descriptor_proto]
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert TRAINING in services
    # Only its own service gets a health status from the server itself; the others
    # are not observed here (no targets), so they are unknown, not SERVING.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mon.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert await _check(stub, API_SERVICES["monitoring"]) == SERVING
        assert await _check(stub, TRAINING) == grpc.StatusCode.NOT_FOUND


async def test_health_check_for_a_watched_peers_service_name_follows_the_peer(
    monitoring_factory: Any, peer_inproc: list[Any]
) -> None:
    peer = peer_inproc[0]
    mon: MonitoringServer = await monitoring_factory(targets=(Target("training", f"127.0.0.1:{peer.port}"),))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mon.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await _eventually(stub, TRAINING, SERVING, within=3.0)
        assert await _check(stub, API_SERVICES["model"]) == grpc.StatusCode.NOT_FOUND  # not watched
        await peer.shutdown(0.5)
        await _eventually(stub, TRAINING, NOT_SERVING, within=2.0)
        assert await _check(stub, "") == SERVING  # monitoring itself is fine


async def test_mirror_leaves_a_name_unknown_until_the_first_observation_then_maps_statuses() -> None:
    health = HealthService()
    mirror = HealthMirror(health, {"components/training": TRAINING})

    def change(status: Status, previous: Status) -> Change:
        return Change(Component("components/training", Kind.SERVICE, "x", status=status), previous)

    assert health.status(TRAINING) is None
    mirror(Change(Component("components/valkey", Kind.DEPENDENCY, "x", status=Status.SERVING), Status.UNKNOWN))
    await mirror.drain()
    assert health.status(TRAINING) is None and health.status("components/valkey") is None
    for status, previous, want in (
        (Status.SERVING, Status.UNKNOWN, SERVING),
        (Status.DEGRADED, Status.SERVING, SERVING),
        (Status.NOT_SERVING, Status.DEGRADED, NOT_SERVING),
    ):
        mirror(change(status, previous))
        await mirror.drain()
        assert health.status(TRAINING) == want, status
    # Several changes at once are applied in order.
    mirror(change(Status.SERVING, Status.NOT_SERVING))
    mirror(change(Status.NOT_SERVING, Status.SERVING))
    await mirror.drain()
    assert health.status(TRAINING) == NOT_SERVING


@pytest.fixture
async def edge_for(tmp_path: Path) -> AsyncIterator[Any]:
    """``await start(monitoring_port) -> edge port``: a real Envoy from the one template."""
    procs: list[subprocess.Popen[bytes]] = []

    async def start(monitoring_port: int) -> int:
        edge, admin = _free_port(), _free_port()
        # Only the monitoring cluster matters here; the others point at closed ports.
        upstreams = {name: ("127.0.0.1", _free_port()) for name in SERVICES}
        upstreams["monitoring"] = ("127.0.0.1", monitoring_port)
        config = tmp_path / "envoy.yaml"
        config.write_text(render_envoy_config(listen_port=edge, admin_port=admin, upstreams=upstreams,
                                              descriptor_path=default_descriptor_path()))
        log = (tmp_path / "envoy.log").open("wb")
        procs.append(subprocess.Popen(
            [str(ENVOY), "-c", str(config), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while True:
                assert procs[-1].poll() is None, (tmp_path / "envoy.log").read_text()
                try:
                    clusters = (await client.get(f"http://127.0.0.1:{admin}/clusters")).text
                except httpx.HTTPError:
                    clusters = ""
                if "monitoring::127.0.0.1:" in clusters and any(
                        line.startswith("monitoring::") and line.endswith("health_flags::healthy")
                        for line in clusters.splitlines()):
                    return edge
                assert time.monotonic() < deadline, clusters
                await asyncio.sleep(0.1)

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def _grpcurl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL), "-plaintext", *grpcurl_auth(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_grpcurl_through_the_edge_lists_describes_and_checks_every_service(
    monitoring_factory: Any, peer_inproc: list[Any], edge_for: Any
) -> None:
    peer = peer_inproc[0]
    mon: MonitoringServer = await monitoring_factory(targets=(Target("training", f"127.0.0.1:{peer.port}"),))
    edge = f"127.0.0.1:{await edge_for(mon.port)}"
    listed = set((await _grpcurl(edge, "list")).split())
    assert set(API_SERVICES.values()) <= listed
    described = await _grpcurl(edge, "describe", TRAINING)
    assert f"{TRAINING} is a service:" in described and "rpc GetTrainingJob" in described
    deadline = time.monotonic() + 3
    while '"SERVING"' not in (checked := await _grpcurl(
            "-d", f'{{"service": "{TRAINING}"}}', edge, "grpc.health.v1.Health/Check")):
        assert time.monotonic() < deadline, checked
        await asyncio.sleep(0.1)
