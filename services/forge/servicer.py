"""ForgeService over gRPC: proto in, RunManager call, proto out. No business logic here."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc

from agentforge.forge.v1 import forge_service_pb2_grpc, phase_pb2, phase_run_pb2
from agentforge.forge.v1 import request_response_pb2 as req
from services.forge.catalog import CATALOG, phase_proto
from services.forge.saga import RunManager
from services.forge.store import RunStore
from services.shared.errors import InvalidArgument, NotFound

__all__ = ["ForgeServicer"]

DEFAULT_PAGE = 50


def _page(size: int) -> int:
    return size or DEFAULT_PAGE


def _encode_token(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def _decode_token(token: str, keys: tuple[str, ...]) -> dict:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(data, dict) or any(k not in data for k in keys):
            raise ValueError
        return data
    except ValueError:
        raise InvalidArgument("bad page token", violations=[("page_token", "not a token from a previous page")]) from None


def _labels(selector: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in selector.split(",")) if selector else {}


class ForgeServicer(forge_service_pb2_grpc.ForgeServiceServicer):
    def __init__(self, runs: RunManager, store: RunStore) -> None:
        self._runs = runs
        self._store = store

    async def ListPhases(self, request: req.ListPhasesRequest, context) -> req.ListPhasesResponse:
        ids = list(CATALOG)
        start = int(_decode_token(request.page_token, ("i",))["i"]) if request.page_token else 0
        end = start + _page(request.page_size)
        phases = [phase_proto(CATALOG[i], await asyncio.to_thread(self._store.latest_run, f"phases/{i}"))
                  for i in ids[start:end]]
        return req.ListPhasesResponse(phases=phases, next_page_token=_encode_token({"i": end}) if end < len(ids) else "")

    async def GetPhase(self, request: req.GetPhaseRequest, context) -> phase_pb2.Phase:
        phase_id = request.name.split("/", 1)[1]
        if phase_id not in CATALOG:
            raise NotFound(f"{request.name} does not exist")
        return phase_proto(CATALOG[phase_id], await asyncio.to_thread(self._store.latest_run, request.name))

    async def StartPhaseRun(self, request: req.StartPhaseRunRequest, context) -> phase_run_pb2.PhaseRun:
        return await self._runs.start(
            phase=request.phase, parameters=request.parameters, run_id=request.phase_run_id,
            request_id=request.request_id, labels=dict(request.labels),
            input_model_version=request.input_model_version,
        )

    async def GetPhaseRun(self, request: req.GetPhaseRunRequest, context) -> phase_run_pb2.PhaseRun:
        return await self._runs.get(request.name)

    async def ListPhaseRuns(self, request: req.ListPhaseRunsRequest, context) -> req.ListPhaseRunsResponse:
        after = None
        if request.page_token:
            tok = _decode_token(request.page_token, ("t", "id"))
            after = (int(tok["t"]), str(tok["id"]))
        size = _page(request.page_size)
        runs = await asyncio.to_thread(
            self._store.list, phase=request.phase, states=list(request.states),
            labels=_labels(request.label_selector), after=after, limit=size + 1)
        token = ""
        if len(runs) > size:
            runs = runs[:size]
            last = runs[-1]
            token = _encode_token({"t": last.create_time.seconds * 1_000_000 + last.create_time.nanos // 1000,
                                   "id": last.name.split("/", 1)[1]})
        return req.ListPhaseRunsResponse(phase_runs=runs, next_page_token=token)

    async def CancelPhaseRun(self, request: req.CancelPhaseRunRequest, context) -> phase_run_pb2.PhaseRun:
        return await self._runs.cancel(request.name, request.reason)

    async def WatchPhaseRun(self, request: req.WatchPhaseRunRequest, context: grpc.aio.ServicerContext):
        async for event in self._runs.watch(request.name, request.cursor):
            yield event
