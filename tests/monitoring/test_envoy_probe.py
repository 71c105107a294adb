"""The Envoy probe against a real Envoy: /ready, and a cluster whose only host is down."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentforge.monitoring.v1 import health_pb2
from agentforge.monitoring.v1 import request_response_pb2 as rr
from services.shared.server import Service
from services.shared.valkey import free_port

from .conftest import PeerProcess
from .test_servicer import poll, status_of

ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")

CONFIG = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  clusters:
  - name: peer
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: peer
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {peer}}}}}}}
    health_checks:
    - timeout: 0.2s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {{}}
"""


@pytest.fixture
def envoy(tmp_path: Path, peer_process: PeerProcess) -> Iterator[str]:
    if not Path(ENVOY).exists():
        pytest.skip("envoy binary not installed")
    admin = free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(CONFIG.format(admin=admin, peer=peer_process.port))
    proc = subprocess.Popen([ENVOY, "-c", str(config), "--base-id", str(admin), "-l", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "envoy exited"
            assert time.monotonic() < deadline, "envoy not ready"
            time.sleep(0.1)
        yield f"127.0.0.1:{admin}"
    finally:
        proc.kill()
        proc.wait()


async def test_envoy_serving_then_degraded_when_its_upstream_dies(
    monitoring_factory: Any, stub_factory: Any, envoy: str, peer_process: PeerProcess, peer_inproc: list[Service],
) -> None:
    mon = await monitoring_factory(envoy_admin_addr=envoy)
    stub = stub_factory(mon.port)
    health = await poll(stub, status_of("components/envoy", health_pb2.HEALTH_STATUS_SERVING), timeout=10)
    edge = {c.name: c for c in health.components}["components/envoy"]
    assert edge.kind == health_pb2.COMPONENT_KIND_EDGE and edge.endpoint == f"http://{envoy}"
    assert edge.latency.ToNanoseconds() > 0

    peer_process.kill()
    health = await poll(stub, status_of("components/envoy", health_pb2.HEALTH_STATUS_DEGRADED), timeout=10)
    assert "peer" in {c.name: c for c in health.components}["components/envoy"].message
    # Envoy answers but its only upstream is gone: DEGRADED, and so is the whole system.
    only_edge = await stub.GetSystemHealth(rr.GetSystemHealthRequest(kinds=[health_pb2.COMPONENT_KIND_EDGE]))
    assert only_edge.status == health_pb2.HEALTH_STATUS_DEGRADED
