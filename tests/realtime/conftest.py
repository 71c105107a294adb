"""A real realtime server (shared runtime, [::]:0) on a real Valkey."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import grpc.aio
import pytest

from agentforge.realtime.v1 import realtime_service_pb2_grpc
from services.realtime.config import BridgeRoute, RealtimeConfig
from services.realtime.server import RealtimeServer, create_server
from services.shared.bus import Backoff, BusConfig
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey


@dataclass
class Realtime:
    server: RealtimeServer
    stub: realtime_service_pb2_grpc.RealtimeServiceStub
    config: RealtimeConfig


def make_config(url: str, prefix: str, **overrides: object) -> RealtimeConfig:
    base = RealtimeConfig(
        server=ServerConfig(grace_seconds=1.0, metrics_port=-1),
        bus=BusConfig(url=url, block_ms=100, backoff=Backoff(initial_s=0.02, max_s=0.2), publish_timeout_s=5.0),
        key_prefix=prefix + "rt:",
        block_ms=100,
        rescan_interval_s=0.1,
        epoch_check_interval_s=0.2,
        presence_ttl_s=3.0,
        bridge_routes=(BridgeRoute(prefix + "events.training", "{subject}"),),
        bridge_group=prefix + "bridge",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


StartRealtime = Callable[..., Awaitable[Realtime]]


@pytest.fixture
async def start_realtime(stream_prefix: str) -> AsyncIterator[Callable[..., Awaitable[Realtime]]]:
    """Start realtime servers against a Valkey URL; all are stopped after the test."""
    started: list[tuple[RealtimeServer, grpc.aio.Channel]] = []

    async def start(url: str, **overrides: object) -> Realtime:
        config = make_config(url, stream_prefix, **overrides)
        server = await create_server(config)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel))
        return Realtime(server, realtime_service_pb2_grpc.RealtimeServiceStub(channel), config)

    yield start
    for server, channel in started:
        await channel.close()
        await server.stop(0.5)


@pytest.fixture
async def realtime(valkey: EmbeddedValkey, start_realtime: StartRealtime) -> Realtime:
    return await start_realtime(valkey.url)
