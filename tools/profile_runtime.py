"""CPU cost of the shared runtime's interceptor path per unary call, in process.

A profiling aid, not a benchmark (targets are measured through the edge by
``benchmarks/edge_unary.py``): it runs ``GetComponentHealth`` through the handler that
``default_interceptors`` builds, N times, with a stand-in for grpc's servicer context
(no gRPC core, no sockets), and prints the CPU time (``time.process_time``, all threads:
the span exporter's too) per call against the bare handler. On a loaded machine CPU
time moves much less than wall time, so it compares changes to the runtime where the
end-to-end benchmark cannot.

Run::

    PYTHONPATH=.:gen/python .venv/bin/python tools/profile_runtime.py [--calls 20000] [--trace]
        [--profile]   # cProfile's top functions by own time

``--trace`` configures tracing as ``run_service`` does, exporting spans to a file in a
temporary directory (``AF_TRACES_DIR``); the log line of every call goes to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "gen" / "python"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import grpc  # noqa: E402
from agentforge.monitoring.v1 import health_pb2, monitoring_service_pb2_grpc, request_response_pb2  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

_Metadatum = namedtuple("_Metadatum", "key value")
METHOD = "/agentforge.monitoring.v1.MonitoringService/GetComponentHealth"


class _Context:
    """What the runtime asks of grpc.aio's servicer context on a successful unary call."""

    def __init__(self, metadata: tuple[Any, ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def time_remaining(self) -> float:
        return 10.0

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def code(self) -> None:
        return None


class _Echo(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    async def GetComponentHealth(self, request: Any, context: Any) -> health_pb2.ComponentHealth:
        return health_pb2.ComponentHealth(name=request.name, kind=health_pb2.COMPONENT_KIND_SERVICE,
                                          status=health_pb2.HEALTH_STATUS_SERVING)


class _Details:
    method = METHOD
    invocation_metadata = ()


async def _measure(calls: int, trace: bool) -> tuple[float, float]:
    from services.shared.authz import outgoing_metadata
    from services.shared.interceptors import default_interceptors
    from services.shared.metrics import GrpcServerMetrics

    bare = grpc.unary_unary_rpc_method_handler(
        _Echo().GetComponentHealth,
        request_deserializer=request_response_pb2.GetComponentHealthRequest.FromString,
        response_serializer=health_pb2.ComponentHealth.SerializeToString)
    chain = default_interceptors(GrpcServerMetrics(CollectorRegistry()), service="monitoring")

    def returning(handler: Any) -> Any:
        async def continuation(_details: Any) -> Any:
            return handler
        return continuation

    async def find_handler() -> Any:
        # What grpc.aio does for every call: each interceptor's intercept_service, in turn.
        handler = bare
        for icpt in reversed(chain):
            handler = await icpt.intercept_service(returning(handler), _Details())
        return handler

    flush = None
    if trace:
        from opentelemetry import trace as otel_trace
        flush = otel_trace.get_tracer_provider().force_flush  # type: ignore[attr-defined]
    metadata = tuple(_Metadatum(k, v) for k, v in outgoing_metadata())
    request = request_response_pb2.GetComponentHealthRequest(name="components/bench")
    results = []
    for through_runtime in (False, True):
        start = time.process_time()
        for i in range(calls):
            handler = await find_handler() if through_runtime else bare
            await handler.unary_unary(request, _Context(metadata))
            if flush is not None and i % 256 == 255:
                flush()  # export every span (a full queue would drop them uncounted)
        if flush is not None:
            flush()
        results.append((time.process_time() - start) / calls * 1e6)
    return results[0], results[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--trace", action="store_true", help="tracing on, spans exported to a file")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = ap.parse_args(argv)

    from services.shared.authz import set_service_identity
    from services.shared.logging import configure_logging

    with tempfile.TemporaryDirectory(prefix="profile_runtime-") as tmp, open(Path(tmp) / "rpc.log", "w") as log:
        configure_logging("monitoring", "INFO", fmt="json", stream=log)
        set_service_identity("monitoring")
        if args.trace:
            os.environ["AF_TRACES_DIR"] = tmp
            from services.shared.tracing import configure_tracing, shutdown_tracing
            configure_tracing("monitoring")
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        bare_us, runtime_us = asyncio.run(_measure(args.calls, args.trace))
        if profiler:
            profiler.disable()
        if args.trace:
            shutdown_tracing()
    print(f"CPU per call: bare handler {bare_us:.1f} µs, through the runtime {runtime_us:.1f} µs "
          f"(+{runtime_us - bare_us:.1f} µs; tracing {'on, exported' if args.trace else 'off'}; {args.calls} calls)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
