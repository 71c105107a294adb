"""ForgeService over a real grpc.aio server: bad input, missing runs, unavailable phases.

The saga itself runs against the real training and model services in
tests/e2e/test_forge_e2e.py; here the peers are never reached.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from google.protobuf import struct_pb2

from agentforge.forge.v1 import forge_service_pb2_grpc
from agentforge.forge.v1 import request_response_pb2 as req
from services.forge.config import ForgeConfig
from services.forge.server import Forge
from services.shared.config import ServerConfig
from services.shared.server import build_server
from services.shared.valkey import free_port
from tests.support import field_violations as _violations
from tests.support import violation_map


@pytest.fixture
async def forge(tmp_path, valkey, monkeypatch) -> AsyncIterator[forge_service_pb2_grpc.ForgeServiceStub]:
    monkeypatch.setenv("REDIS_URL", valkey.url)
    dead = f"127.0.0.1:{free_port()}"  # peers are not needed for these calls
    app = Forge(ForgeConfig(data_dir=tmp_path, training_addr=dead, model_addr=dead))
    service = await build_server(ServerConfig(grace_seconds=0.2, metrics_port=-1), "forge", app.register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield forge_service_pb2_grpc.ForgeServiceStub(channel)
    finally:
        await channel.close()
        await service.shutdown(0.2)
        await app.close()


def _params(**kw) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


async def _call(stub, method: str, request):
    rpc = getattr(stub, method)
    if method == "WatchPhaseRun":
        return [e async for e in rpc(request)]
    return await rpc(request)


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("ListPhases", req.ListPhasesRequest(page_size=-1), "page_size"),
        ("GetPhase", req.GetPhaseRequest(name="phases/Cognate"), "name"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="cognate"), "phase"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/cognate", parameters=_params(max_steps=0)),
         "parameters.max_steps"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/cognate", parameters=_params(width=66, heads=4)),
         "parameters.width"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/evomerge", parameters=_params(population=1)),
         "parameters.population"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/evomerge",
                                                   parameters=_params(parents=["models/x/versions/1", "nope"])),
         "parameters.parents[1]"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/bitnet", parameters=_params(source="x")),
         "parameters.source"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/pipeline",
                                                   parameters=_params(cognate={"max_steps": -1})),
         "parameters.cognate.max_steps"),
        ("StartPhaseRun", req.StartPhaseRunRequest(phase="phases/cognate",
                                                   input_model_version="models/m/versions/1"),
         "input_model_version"),
        ("GetPhaseRun", req.GetPhaseRunRequest(name="runs/x"), "name"),
        ("ListPhaseRuns", req.ListPhaseRunsRequest(page_size=5000), "page_size"),
        ("ListPhaseRuns", req.ListPhaseRunsRequest(page_token="not-a-token"), "page_token"),
        ("CancelPhaseRun", req.CancelPhaseRunRequest(name=""), "name"),
        ("WatchPhaseRun", req.WatchPhaseRunRequest(name="phaseRuns/x", cursor="c" * 300), "cursor"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(forge, method, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(forge, method, request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in _violations(err.value)


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetPhase", req.GetPhaseRequest(name="phases/nope")),
        ("GetPhaseRun", req.GetPhaseRunRequest(name="phaseRuns/missing")),
        ("CancelPhaseRun", req.CancelPhaseRunRequest(name="phaseRuns/missing")),
        ("WatchPhaseRun", req.WatchPhaseRunRequest(name="phaseRuns/missing")),
    ],
)
async def test_missing_things_are_not_found(forge, method, request_):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(forge, method, request_)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_unknown_phase_is_invalid_argument_on_the_phase_field(forge):
    """Issue 11: the phase is a field of the request, not a resource the call acts on."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.StartPhaseRun(req.StartPhaseRunRequest(phase="phases/nope"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = violation_map(err.value)
    assert "phase" in violations and "phases/cognate" in violations["phase"], violations
    assert list((await forge.ListPhaseRuns(req.ListPhaseRunsRequest())).phase_runs) == []


async def test_a_phase_not_implemented_here_is_failed_precondition_not_a_pretend_run(forge):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.StartPhaseRun(req.StartPhaseRunRequest(phase="phases/quietstar"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await forge.ListPhaseRuns(req.ListPhaseRunsRequest())
    assert list(listed.phase_runs) == []


async def test_catalog_pages(forge):
    first = await forge.ListPhases(req.ListPhasesRequest(page_size=3))
    assert [p.name for p in first.phases] == ["phases/cognate", "phases/evomerge", "phases/quietstar"]
    rest = await forge.ListPhases(req.ListPhasesRequest(page_size=10, page_token=first.next_page_token))
    assert len(rest.phases) == 6 and rest.next_page_token == ""
    cognate = await forge.GetPhase(req.GetPhaseRequest(name="phases/cognate"))
    assert cognate.available and {p.name for p in cognate.parameters} >= {"max_steps", "batch_size"}


async def test_a_start_whose_model_service_is_away_is_unavailable_and_makes_no_run(forge):
    """EvoMerge checks its parents in the registry at start; the registry being down is retryable."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forge.StartPhaseRun(req.StartPhaseRunRequest(phase="phases/evomerge"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert list((await forge.ListPhaseRuns(req.ListPhaseRunsRequest())).phase_runs) == []


async def test_store_reads_run_on_the_store_thread_not_the_event_loop(forge, monkeypatch) -> None:
    import threading

    from services.forge.store import RunStore

    threads: list[tuple[str, str]] = []
    for name in ("get", "list", "latest"):
        original = getattr(RunStore, name)

        def traced(self, *args, _original=original, _name=name, **kwargs):
            threads.append((_name, threading.current_thread().name))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(RunStore, name, traced)
    await forge.ListPhases(req.ListPhasesRequest())
    await forge.ListPhaseRuns(req.ListPhaseRunsRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await forge.GetPhaseRun(req.GetPhaseRunRequest(name="phaseRuns/none"))
    assert {n for n, _ in threads} == {"get", "list", "latest"}
    assert all(t.startswith("forge-db") for _, t in threads), threads
