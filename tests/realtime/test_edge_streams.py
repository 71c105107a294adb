"""The stream fan-out benchmark at CI size: 300 gRPC + 30 grpc-web Subscribe streams
through a real Envoy to a real realtime process on real Valkey (benchmarks/stream_fanout.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_fanout.py"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _bench_module():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("stream_fanout", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stream_fanout"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_330_streams_through_envoy_get_every_message_on_bounded_redis_connections(monkeypatch) -> None:
    for name in ("REDIS_URL", "AF_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    bench = _bench_module()
    args = bench.parse_args(["--streams", "300", "--web-streams", "30", "--scenario", "3:10",
                             "--seconds", "3", "--drain", "2", "--floor-samples", "20"])
    report = await bench.run(args)
    [result] = report["subscribe"]
    streams = result["streams"] + result["web_streams"]
    assert result["errors"] == 0, result["first_error"]
    assert result["complete_streams"] == streams == 330
    assert result["published"] == 30
    # Connections do not grow with streams: readers + catch-up pool + unary pool at most,
    # and in practice far fewer than one per stream.
    assert result["redis_clients"] <= result["redis_clients_bound"]
    assert result["redis_clients"] < 40
    assert result["rss_after_cancel_vs_baseline"] < 0.10
