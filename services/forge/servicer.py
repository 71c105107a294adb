"""ForgeService over gRPC: proto in, RunManager call, proto out. No business logic here."""

from __future__ import annotations

import grpc

from agentforge.forge.v1 import forge_service_pb2_grpc, phase_pb2, phase_run_pb2
from agentforge.forge.v1 import request_response_pb2 as req
from services.forge.catalog import CATALOG, phase_proto
from services.forge.saga import RunManager
from services.forge.store import RunStore
from services.shared.errors import InvalidArgument, NotFound
from services.shared.paging import decode_page_token, encode_page_token, page_size, query_fingerprint

__all__ = ["ForgeServicer"]

def _labels(selector: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in selector.split(",")) if selector else {}


class ForgeServicer(forge_service_pb2_grpc.ForgeServiceServicer):
    def __init__(self, runs: RunManager, store: RunStore) -> None:
        self._runs = runs
        self._store = store

    async def ListPhases(self, request: req.ListPhasesRequest, context) -> req.ListPhasesResponse:
        ids = list(CATALOG)
        start = decode_page_token(request.page_token, "phases", expect=int) or 0
        end = start + page_size(request.page_size)
        phases = [phase_proto(CATALOG[i], await self._store.db(self._store.latest, f"phases/{i}"))
                  for i in ids[start:end]]
        return req.ListPhasesResponse(phases=phases, next_page_token=encode_page_token(end, "phases") if end < len(ids) else "")

    async def GetPhase(self, request: req.GetPhaseRequest, context) -> phase_pb2.Phase:
        phase_id = request.name.split("/", 1)[1]
        if phase_id not in CATALOG:
            raise NotFound(f"{request.name} does not exist", reason="PHASE_NOT_FOUND")
        return phase_proto(CATALOG[phase_id], await self._store.db(self._store.latest, request.name))

    async def StartPhaseRun(self, request: req.StartPhaseRunRequest, context) -> phase_run_pb2.PhaseRun:
        return await self._runs.start(
            phase=request.phase, parameters=request.parameters, run_id=request.phase_run_id,
            request_id=request.request_id, labels=dict(request.labels),
            input_model_version=request.input_model_version,
        )

    async def GetPhaseRun(self, request: req.GetPhaseRunRequest, context) -> phase_run_pb2.PhaseRun:
        return await self._runs.get(request.name)

    async def ListPhaseRuns(self, request: req.ListPhaseRunsRequest, context) -> req.ListPhaseRunsResponse:
        fingerprint = query_fingerprint(request.phase, sorted(request.states), request.label_selector)
        position = decode_page_token(request.page_token, fingerprint, expect=list)
        if position is not None and not (len(position) == 2 and isinstance(position[0], int)
                                         and isinstance(position[1], str)):
            raise InvalidArgument("bad page token", violations=[("page_token", "not a token from a previous page")])
        after = tuple(position) if position is not None else None
        size = page_size(request.page_size)
        runs = await self._store.db(
            self._store.list, phase=request.phase, states=list(request.states),
            labels=_labels(request.label_selector), after=after, limit=size + 1)
        token = ""
        if len(runs) > size:
            runs = runs[:size]
            last = runs[-1]
            token = encode_page_token([last.create_time.seconds * 1_000_000 + last.create_time.nanos // 1000,
                                       last.name.split("/", 1)[1]], fingerprint)
        return req.ListPhaseRunsResponse(phase_runs=runs, next_page_token=token)

    async def CancelPhaseRun(self, request: req.CancelPhaseRunRequest, context) -> phase_run_pb2.PhaseRun:
        return await self._runs.cancel(request.name, request.reason)

    async def WatchPhaseRun(self, request: req.WatchPhaseRunRequest, context: grpc.aio.ServicerContext):
        async for event in self._runs.watch(request.name, request.cursor):
            yield event
