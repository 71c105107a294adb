"""With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, the services and Envoy send their spans to
that collector (OTLP/gRPC) instead of the files, and the edge's span is the parent of
the service's. The collector here is a real OTLP ``TraceService`` gRPC server in the
test process; the mesh is Valkey, the model service and Envoy."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.launcher.mesh import Mesh, MeshConfig
from tests.support import started_mesh

from .conftest import START_TIMEOUT

pytestmark = pytest.mark.e2e


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with its resource's service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> object:  # noqa: N802
        with self._lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    self.spans.extend((service, span) for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[tuple[str, object]]:
        with self._lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def mesh(collector: tuple[Collector, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base: Path = tmp_path_factory.mktemp("otlp-mesh")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    config = MeshConfig(services=("model",), env=env, data_dir=base / "data", log_dir=base / "logs",
                        run_dir=base / "run", startup_timeout=START_TIMEOUT, stop_grace=8.0)
    with started_mesh(config, logs=base / "logs") as instance:
        yield instance


def test_services_and_the_edge_export_to_the_collector(collector: tuple[Collector, int], mesh: Mesh) -> None:
    servicer, _ = collector
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    with httpx.Client(base_url=mesh.edge_url, timeout=30) as rest:
        resp = rest.get("/v1/models", headers={"traceparent": f"00-{trace_id}-{caller}-01"})
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = servicer.of_trace(trace_id)
        services = {svc for svc, _ in spans}
        if {"edge", "model"} <= services:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"collector got {sorted((svc, s.name) for svc, s in servicer.of_trace(trace_id))}")
    [(_, edge)] = [(svc, s) for svc, s in spans if svc == "edge"]
    [(_, server)] = [(svc, s) for svc, s in spans
                     if svc == "model" and s.name == "agentforge.model.v1.ModelService/ListModels"]
    assert edge.parent_span_id.hex() == caller  # the edge continued the caller's trace
    assert server.parent_span_id == edge.span_id  # and the service continued the edge's span
    # Nothing went to the files: the collector replaced them.
    files = list(mesh.traces_dir.glob("*.jsonl")) if mesh.traces_dir.exists() else []
    assert all(f.stat().st_size == 0 for f in files), files
