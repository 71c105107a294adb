"""Forge's domain metrics (docs/metrics.md): phase runs by phase and state."""

from __future__ import annotations

import asyncio

from google.protobuf import timestamp_pb2

from agentforge.forge.v1 import phase_run_pb2 as pr
from services.forge.config import ForgeConfig
from services.forge.metrics import PhaseRunsCollector
from services.forge.server import Forge
from services.forge.store import RunStore
from services.shared.config import ServerConfig
from services.shared.server import build_server
from services.shared.valkey import free_port
from tests.support import scrape


def _run(run_id: str, phase: str, state: int) -> pr.PhaseRun:
    return pr.PhaseRun(name=f"phaseRuns/{run_id}", phase=phase, state=state,
                       create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000))


def test_phase_runs_by_phase_and_state_with_zeros(tmp_path) -> None:
    store = RunStore(tmp_path / "forge.db")
    store.insert(_run("a", "phases/cognate", pr.PHASE_RUN_STATE_RUNNING))
    store.insert(_run("b", "phases/cognate", pr.PHASE_RUN_STATE_SUCCEEDED))
    store.insert(_run("c", "phases/cognate", pr.PHASE_RUN_STATE_SUCCEEDED))
    store.insert(_run("d", "phases/pipeline", pr.PHASE_RUN_STATE_FAILED))
    collector = PhaseRunsCollector(tmp_path / "forge.db")
    try:
        got = {tuple(s.labels.values()): s.value for f in collector.collect() for s in f.samples}
        assert got[("cognate", "running")] == 1
        assert got[("cognate", "succeeded")] == 2
        assert got[("pipeline", "failed")] == 1
        assert got[("bitnet", "pending")] == 0  # every available phase, every state
        assert ("quietstar", "pending") not in got  # planned phases cannot run
        store.save(_run("a", "phases/cognate", pr.PHASE_RUN_STATE_CANCELLED))
        got = {tuple(s.labels.values()): s.value for f in collector.collect() for s in f.samples}
        assert got[("cognate", "running")] == 0 and got[("cognate", "cancelled")] == 1
    finally:
        collector.close()
        store.close()


async def test_forge_server_exports_runs_stream_and_watchers(tmp_path, valkey, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", valkey.url)
    dead = f"127.0.0.1:{free_port()}"
    app = Forge(ForgeConfig(data_dir=tmp_path, training_addr=dead, model_addr=dead))
    service = await build_server(ServerConfig(grace_seconds=0.2, metrics_port=0), "forge", app.register,
                                 bind_metrics=app.bind_metrics)
    try:
        got = await asyncio.to_thread(scrape, service.metrics_port)
        assert got[("agentforge_forge_phase_runs", (("phase", "cognate"), ("state", "running")))] == 0
        assert got[("agentforge_fanout_watchers", (("fanout", "forge"),))] == 0
    finally:
        await service.shutdown(0.2)
        await app.close()
