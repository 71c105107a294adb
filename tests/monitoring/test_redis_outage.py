"""System health during a Redis outage (issue 7): Valkey and the services that need it
show NOT_SERVING while it is away, and SERVING again once it is back.

Regression: with Valkey killed, system health still said everything was SERVING. The
peer is the shared runtime with a Redis dependency (what every Redis-backed service
builds); the Valkey is real and really killed.
"""

from __future__ import annotations

from collections.abc import Callable

from agentforge.monitoring.v1 import health_pb2
from grpc_health.v1 import health_pb2 as grpc_health_pb2
from grpc_health.v1 import health_pb2_grpc
import grpc.aio

from services.monitoring.config import Target
from services.shared.config import ServerConfig
from services.shared.readiness import redis_ping
from services.shared.server import build_server
from services.shared.valkey import EmbeddedValkey

from .test_servicer import by_name, poll

SERVING = health_pb2.HEALTH_STATUS_SERVING
NOT_SERVING = health_pb2.HEALTH_STATUS_NOT_SERVING


async def test_valkey_and_the_services_needing_it_are_not_serving_while_it_is_away(
        valkey_factory: Callable[[], EmbeddedValkey], monitoring_factory, stub_factory) -> None:  # type: ignore[no-untyped-def]
    valkey = valkey_factory()
    peer = await build_server(ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.5),
                              "peer", lambda s: ["test.v1.Peer"], dependencies={"redis": redis_ping(valkey.url)})
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{peer.port}")
    try:
        mon = await monitoring_factory(targets=(Target("training", f"127.0.0.1:{peer.port}"),), redis_url=valkey.url)
        stub = stub_factory(mon.port)
        kinds = [health_pb2.COMPONENT_KIND_SERVICE, health_pb2.COMPONENT_KIND_DEPENDENCY]
        await poll(stub, lambda h: h.status == SERVING, timeout=10, kinds=kinds)

        valkey.kill()
        down = await poll(stub, lambda h: h.status == NOT_SERVING
                          and by_name(h)["components/valkey"].status == NOT_SERVING
                          and by_name(h)["components/training"].status == NOT_SERVING, timeout=10, kinds=kinds)
        assert "PING failed" in by_name(down)["components/valkey"].message
        # The service says so itself, for every name it serves (what Envoy or k8s would read).
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "test.v1.Peer"):
            reply = await health.Check(grpc_health_pb2.HealthCheckRequest(service=name))
            assert reply.status == grpc_health_pb2.HealthCheckResponse.NOT_SERVING

        valkey.start()  # same port, empty (no persistence)
        await poll(stub, lambda h: h.status == SERVING, timeout=10, kinds=kinds)
        reply = await health.Check(grpc_health_pb2.HealthCheckRequest(service=""))
        assert reply.status == grpc_health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await peer.shutdown(0.5)
