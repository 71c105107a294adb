"""Chaos: SIGTERM a realtime service process with 200 open streams.

Every client must get a clean end (a ``stream_end`` message with UNAVAILABLE, then the
call's UNAVAILABLE status) promptly, and, once the service is back, resume with its last
cursor and receive exactly what was published since: nothing lost, nothing twice.
Real processes: ``python -m services.realtime`` on a real Valkey.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

from agentforge.realtime.v1 import realtime_service_pb2_grpc
from agentforge.realtime.v1 import request_response_pb2 as rr
from services.shared.valkey import EmbeddedValkey, free_port

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 200
TOPICS = 4

pytestmark = pytest.mark.slow


def start_realtime(redis_url: str, port: int, prefix: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
        "REDIS_URL": redis_url,
        "AF_REALTIME_PORT": str(port),
        "AF_REALTIME_METRICS_PORT": "-1",
        "AF_REALTIME_GRACE_SECONDS": "5",
        "AF_REALTIME_KEY_PREFIX": prefix,
        "AF_REALTIME_BRIDGE_ROUTES": "",
        "AF_REALTIME_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "services.realtime"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=None, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{") and json.loads(line).get("event") == "ready":
            return proc
    proc.kill()
    raise AssertionError("realtime did not print its ready line")


def data(n: int) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update({"n": n})
    return value


class Client:
    """One subscriber that remembers its last cursor and every message it received."""

    def __init__(self, stub: realtime_service_pb2_grpc.RealtimeServiceStub, topic: str) -> None:
        self.stub = stub
        self.topic = topic
        self.cursor = ""
        self.received: list[int] = []
        self.ends: list[int] = []
        self.status: grpc.StatusCode | None = None
        self.ready = asyncio.Event()

    async def run(self) -> None:
        request = rr.SubscribeRequest(topics=[self.topic], cursor=self.cursor)
        call = self.stub.Subscribe(request)
        try:
            async for item in call:
                kind = item.WhichOneof("kind")
                if kind == "heartbeat":
                    self.cursor = item.heartbeat.cursor or self.cursor
                    self.ready.set()
                elif kind == "message":
                    self.received.append(item.message.sequence)
                    self.cursor = item.message.cursor
                elif kind == "stream_end":
                    self.ends.append(item.stream_end.code)
                else:
                    raise AssertionError(f"unexpected {kind}")
        except grpc.aio.AioRpcError as exc:
            self.status = exc.code()


async def test_sigterm_with_200_open_streams_ends_each_cleanly_and_all_resume(valkey_factory: object,
                                                                            stream_prefix: str) -> None:
    server: EmbeddedValkey = valkey_factory()  # type: ignore[operator]
    port = free_port()
    proc = start_realtime(server.url, port, stream_prefix)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        clients = [Client(stub, f"chaos/{i % TOPICS}") for i in range(STREAMS)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 60)
        before = [await stub.Publish(rr.PublishRequest(topic=f"chaos/{i % TOPICS}", data=data(i)))
                  for i in range(2 * TOPICS)]
        async with asyncio.timeout(30):
            while any(len(c.received) < 2 for c in clients):
                await asyncio.sleep(0.05)

        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        ended_in = time.monotonic() - stopped
        assert proc.wait(15) == 0
        for client in clients:
            assert client.ends == [grpc.StatusCode.UNAVAILABLE.value[0]], client.ends
            assert client.status == grpc.StatusCode.UNAVAILABLE
        assert ended_in < 10, f"streams took {ended_in:.1f}s to end (grace is 5 s)"

        proc = start_realtime(server.url, port, stream_prefix)
        after = [await _publish_retrying(stub, f"chaos/{i % TOPICS}", 100 + i) for i in range(3 * TOPICS)]
        for client in clients:
            client.ends, client.status, client.ready = [], None, asyncio.Event()
        tasks = [asyncio.create_task(c.run()) for c in clients]
        async with asyncio.timeout(60):
            while any(len(c.received) < 5 for c in clients):
                await asyncio.sleep(0.05)
        sequences = {}
        for response in [*before, *after]:
            sequences.setdefault(response.topic, []).append(response.sequence)
        for client in clients:  # everything exactly once, in order, across the restart
            assert client.received == sorted(sequences[client.topic]), (client.topic, client.received)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await channel.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _publish_retrying(stub: realtime_service_pb2_grpc.RealtimeServiceStub, topic: str, n: int) -> rr.PublishResponse:
    for attempt in range(50):
        try:
            return await stub.Publish(rr.PublishRequest(topic=topic, data=data(n), request_id=f"p{n}"))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 49:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")
