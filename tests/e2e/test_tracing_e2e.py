"""One trace across the mesh: a REST call through Envoy → forge → training → the worker
that runs the job → the model registry's hand-off, asserted span by span from the
OTLP/JSON files the services write without a collector (``<run dir>/traces``), with the
same reader ``forge trace`` uses."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from agentforge.cli import traces
from agentforge.cli.traces import Span
from services.launcher.mesh import Mesh

from .conftest import ndjson

pytestmark = pytest.mark.e2e

COGNATE = {"candidates": 1, "max_steps": 6, "batch_size": 4, "width": 16, "heads": 2, "layers": 1,
           "context_length": 16, "progress_interval": 3}
FORGE, TRAINING, MODEL = "agentforge.forge.v1.ForgeService", "agentforge.training.v1.TrainingService", \
    "agentforge.model.v1.ModelService"


def one(spans: list[Span], what: str, pred: Callable[[Span], bool]) -> Span:
    found = [s for s in spans if pred(s)]
    assert len(found) == 1, f"{what}: {len(found)} spans match; names: {sorted({s.name for s in spans})}"
    return found[0]


def wait_for_trace(mesh: Mesh, trace_id: str, done: Callable[[list[Span]], bool],
                   timeout: float = 60.0) -> list[Span]:
    """The trace's spans once ``done`` holds (processes export in batches)."""
    deadline = time.monotonic() + timeout
    spans: list[Span] = []
    while time.monotonic() < deadline:
        spans = traces.load_spans(mesh.traces_dir, trace_id)
        if spans and done(spans):
            return spans
        time.sleep(0.3)
    pytest.fail(f"trace {trace_id} incomplete after {timeout}s: {sorted((s.service, s.name) for s in spans)}")


@pytest.mark.timeout(300)
def test_a_rest_call_is_one_trace_through_forge_training_the_worker_and_the_registry(
        rest: httpx.Client, mesh: Mesh) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    resp = rest.post("/v1/phases/cognate:start", json={"parameters": COGNATE, "requestId": str(uuid.uuid4())},
                     headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
    assert resp.status_code == 200, resp.text
    run = resp.json()["name"]
    status, lines = ndjson(rest, f"/v1/{run}:watch", timeout=240)
    assert status == 200 and lines[-1]["streamEnd"].get("code", 0) == 0, lines[-1:]
    final = rest.get(f"/v1/{run}").json()
    assert final["state"] == "PHASE_RUN_STATE_SUCCEEDED", final
    version = final["outputs"]["modelVersion"]
    job = final["outputs"]["artifacts"]["training_job_1"]

    def handed_off(spans: list[Span]) -> bool:  # ... and the saga's span, which ends last, written
        return any(s.service == "model" and s.attributes.get("agentforge.model_version") == version for s in spans) \
            and any(s.name == "saga cognate" for s in spans) \
            and len([s for s in spans if s.name == "process events.model"]) >= 2

    spans = wait_for_trace(mesh, trace_id, handed_off)
    by_id = {s.span_id: s for s in spans}

    def ancestors(span: Span) -> list[Span]:
        chain = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            chain.append(span)
        return chain

    # The edge continued the caller's trace with a span of its own (not exported: no
    # collector), which is forge's server span's parent.
    start = one(spans, "forge StartPhaseRun", lambda s: s.service == "forge" and s.kind == "SERVER"
                and s.name == f"{FORGE}/StartPhaseRun")
    assert start.parent_id not in ("", caller_span) and start.parent_id not in by_id
    assert start.attributes["rpc.system"] == "grpc" and start.attributes["rpc.grpc.status_code"] == 0
    assert (start.attributes["rpc.service"], start.attributes["rpc.method"]) == (FORGE, "StartPhaseRun")
    # forge: the saga (a task that outlives the call) and its steps stay in the trace.
    saga = one(spans, "saga", lambda s: s.name == "saga cognate")
    assert saga.parent_id == start.span_id and saga.attributes["agentforge.phase_run"] == run
    create_step = one(spans, "create step", lambda s: s.name == "saga step create_training_jobs")
    assert create_step.parent_id == saga.span_id
    # forge → training: client span, then training's server span under it.
    client = one(spans, "forge's CreateTrainingJob", lambda s: s.service == "forge" and s.kind == "CLIENT"
                 and s.name == f"{TRAINING}/CreateTrainingJob")
    assert create_step in ancestors(client) and client.attributes["rpc.grpc.status_code"] == 0
    server = one(spans, "training's CreateTrainingJob", lambda s: s.service == "training" and s.kind == "SERVER"
                 and s.name == f"{TRAINING}/CreateTrainingJob")
    assert server.parent_id == client.span_id
    # training enqueues the job (a bus publish, with its Redis command under it) ...
    enqueue = one(spans, "enqueue", lambda s: s.kind == "PRODUCER" and s.name == "send training.jobs.normal")
    assert server in ancestors(enqueue)
    assert any(s.attributes.get("db.system") == "redis" and s.parent_id == enqueue.span_id for s in spans)
    # ... and a spawned worker process runs it: its span is a child of the enqueue and links to it.
    worker = one(spans, "worker's job", lambda s: s.kind == "CONSUMER" and s.name == "process training.jobs.normal")
    assert worker.service == "training" and worker.parent_id == enqueue.span_id
    assert worker.links == [(trace_id, enqueue.span_id)]
    assert worker.attributes["agentforge.training_job"] == job
    assert worker.attributes["messaging.consumer.group.name"] == "workers"
    # The worker stores the job's end with a TrainingJobCompleted in the training outbox,
    # whose envelope keeps the context of the span that stored it (the worker's job span),
    # and the relay publishes it on events.training; the registry's hand-off consumes it
    # as a child of and linked to that span, and registers the version.
    handoff = one(spans, "hand-off", lambda s: s.service == "model" and s.kind == "CONSUMER"
                  and s.attributes.get("agentforge.model_version") == version)
    assert handoff.name == "process events.training"
    assert handoff.attributes["messaging.consumer.group.name"] == "model-registry"
    assert handoff.parent_id == worker.span_id
    assert handoff.links == [(trace_id, worker.span_id)]
    # The registry announces the new version (its outbox keeps the hand-off's context),
    # and the realtime bridge's span for that event is part of the trace as well.
    # (So is its AliasMoved: forge's SetModelAlias call stored that one.)
    announced = [s for s in spans if s.service == "realtime" and s.name == "process events.model"]
    assert any(s.parent_id == handoff.span_id for s in announced)
    alias_set = one(spans, "SetModelAlias", lambda s: s.service == "model" and s.kind == "SERVER"
                    and s.name == f"{MODEL}/SetModelAlias")
    assert any(s.parent_id == alias_set.span_id for s in announced)
    # The training service's shared stream readers do not join the trace of the watch
    # that started them (they loop for every watcher): only its own catch-up reads do.
    watches = {s.span_id for s in spans if s.name == f"{TRAINING}/WatchTrainingJob"}
    assert watches and len([s for s in spans if s.parent_id in watches and s.name == "XREAD"]) <= 20
    # Every span of the trace hangs off the edge's span: one tree, no strays.
    assert {(ancestors(s) or [s])[-1].span_id for s in spans} == {start.span_id}
    lines = traces.render_tree(trace_id, spans)
    assert lines[0].startswith(f"trace {trace_id}")
    assert any("[model] process events.training" in line for line in lines)


def test_the_edge_starts_a_trace_for_a_call_without_one(rest: httpx.Client, mesh: Mesh) -> None:
    run_id = f"no-such-{uuid.uuid4().hex[:8]}"
    assert rest.get(f"/v1/phaseRuns/{run_id}").status_code == 404

    def found(spans: list[Span]) -> bool:
        return any(s.name == f"{FORGE}/GetPhaseRun" and s.attributes.get("rpc.grpc.status_code") == 5 for s in spans)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = [s for s in traces.load_spans(mesh.traces_dir) if s.name == f"{FORGE}/GetPhaseRun"]
        if found(spans):
            break
        time.sleep(0.3)
    else:
        pytest.fail("no GetPhaseRun span")
    span = [s for s in spans if s.attributes.get("rpc.grpc.status_code") == 5][-1]
    assert span.parent_id and len(span.trace_id) == 32  # the edge's span is its parent
    assert span.status == ""  # NOT_FOUND is the client's mistake, not an error of the server
