"""The Agent Forge phases end to end, seen only through the edge (REST and the seed's routes).

Cognate trains three models as training jobs and registers each; EvoMerge merges three
Cognate versions; BitNet compresses a version; the pipeline chains them. The forge saga
spans three services (forge → training → model, over the bus for the hand-off). Settings
are tiny (a 1-layer width-32 byte LM, tens of steps) so the file runs in a few minutes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import signal
import time
import uuid
from typing import Any

import httpx
import pytest
import torch

from services.launcher.mesh import Mesh

from .conftest import ndjson, step_of, wait_job

pytestmark = pytest.mark.e2e

COGNATE = {"max_steps": 20, "batch_size": 8, "width": 32, "heads": 2, "layers": 1, "context_length": 32,
           "progress_interval": 5}
EVOMERGE = {"population": 4, "generations": 2, "elite": 1}
BITNET = {"qat_steps": 10, "batch_size": 8}
SUCCEEDED, CANCELLED, FAILED = "PHASE_RUN_STATE_SUCCEEDED", "PHASE_RUN_STATE_CANCELLED", "PHASE_RUN_STATE_FAILED"


def start(rest: httpx.Client, phase: str, parameters: dict[str, Any], expect: int = 200) -> dict[str, Any]:
    resp = rest.post(f"/v1/phases/{phase}:start", json={"parameters": parameters, "requestId": str(uuid.uuid4())})
    assert resp.status_code == expect, resp.text
    return resp.json()


def watch_run(rest: httpx.Client, name: str, timeout: float = 240.0) -> list[dict[str, Any]]:
    """The run's whole REST stream, checked to end with streamEnd OK; the events."""
    status, lines = ndjson(rest, f"/v1/{name}:watch", timeout=timeout)
    assert status == 200, lines
    assert "streamEnd" in lines[-1] and lines[-1]["streamEnd"].get("code", 0) == 0, lines[-1]
    events = [line for line in lines[:-1] if "heartbeat" not in line]  # keepalives of quiet spells
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    return events


def run_states(events: list[dict[str, Any]]) -> list[str]:
    return [e["stateChanged"]["toState"] for e in events if "stateChanged" in e]


def alias(rest: httpx.Client, model: str, name: str = "winner") -> str | None:
    resp = rest.get(f"/v1/models/{model}")
    return resp.json().get("aliases", {}).get(name) if resp.status_code == 200 else None


def download(rest: httpx.Client, version: str) -> bytes:
    status, lines = ndjson(rest, f"/v1/{version}:download", params={"chunkSize": 65536})
    assert status == 200 and lines[-1].get("streamEnd", {"code": -1}).get("code", 0) == 0, lines[-1:]
    return b"".join(base64.b64decode(c["data"]) for c in lines[:-1])


def cognate_run(rest: httpx.Client, **overrides: Any) -> dict[str, Any]:
    run = start(rest, "cognate", {**COGNATE, **overrides})
    events = watch_run(rest, run["name"])
    assert run_states(events)[-1] == SUCCEEDED, events[-1]
    return events[-1]["phaseRun"]


@pytest.mark.timeout(600)
def test_cognate_trains_three_models_registers_each_and_moves_winner_to_the_lowest_val_loss(
        rest: httpx.Client) -> None:
    run = start(rest, "cognate", COGNATE)
    events = watch_run(rest, run["name"])
    assert run_states(events)[-1] == SUCCEEDED, events[-1]
    final = events[-1]["phaseRun"]
    assert all(step["state"] == "SAGA_STEP_STATE_SUCCEEDED" for step in final["steps"]), final["steps"]
    relayed = [e["progress"]["message"] for e in events
               if "progress" in e and e["progress"].get("currentStep") == "train"]
    assert relayed and all(re.search(r"step \d+/20 loss [0-9.]+", m) for m in relayed), relayed

    outputs = final["outputs"]
    jobs = [outputs["artifacts"][f"training_job_{i}"] for i in (1, 2, 3)]
    versions = [outputs["artifacts"][f"candidate_{i}"] for i in (1, 2, 3)]
    assert len(set(jobs)) == 3 and len(set(versions)) == 3
    seeds, losses = [], {}
    for job_name, version_name in zip(jobs, versions):
        job = rest.get(f"/v1/{job_name}").json()
        assert job["state"] == "TRAINING_JOB_STATE_SUCCEEDED" and step_of(job) == 20
        assert job["phaseRun"] == run["name"] and job["phase"] == "phases/cognate"
        seeds.append(int(job["spec"].get("seed", 0)))
        version = rest.get(f"/v1/{version_name}").json()
        assert version["state"] == "MODEL_VERSION_STATE_READY"
        assert version["lineage"]["trainingJob"] == job_name and version["lineage"]["phaseRun"] == run["name"]
        data = download(rest, version_name)
        assert hashlib.sha256(data).hexdigest() == version["artifact"]["sha256"]
        losses[version_name] = version["metrics"]["eval_loss"]
    assert len(set(seeds)) == 3  # different seeds by default
    winner = min(losses, key=losses.get)
    assert outputs["modelVersion"] == winner
    assert alias(rest, "cognate") == winner.rsplit("/", 1)[1]
    assert outputs["metrics"]["winner_val_loss"] == pytest.approx(losses[winner])


def test_evomerge_without_three_cognate_versions_is_failed_precondition_naming_what_is_missing(
        rest: httpx.Client) -> None:
    resp = rest.post("/v1/phases/evomerge:start", json={"parameters": {"source_model": "no-cognate-here"}})
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert "models/no-cognate-here" in body["message"] and "3 READY versions" in body["message"]
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "PREREQUISITE_MISSING"
    runs = rest.get("/v1/phaseRuns", params={"phase": "phases/evomerge", "pageSize": 1000}).json()
    assert all(r["parameters"].get("source_model") != "no-cognate-here" for r in runs.get("phaseRuns", []))


def test_evomerge_refuses_parents_of_different_architectures(rest: httpx.Client) -> None:
    mixed = cognate_run(rest, model="cognate-mixed", widths=[32, 32, 48], max_steps=5)
    versions = [mixed["outputs"]["artifacts"][f"candidate_{i}"] for i in (1, 2, 3)]
    # given explicitly: INVALID_ARGUMENT naming the odd parent
    resp = rest.post("/v1/phases/evomerge:start", json={"parameters": {"parents": versions}})
    assert resp.status_code == 400, resp.text
    violations = {v["field"]: v["description"] for d in resp.json()["details"]
                  if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]}
    assert "parameters.parents[2]" in violations and "model.width 48 vs 32" in violations["parameters.parents[2]"]
    # chosen from the model: FAILED_PRECONDITION ARCHITECTURE_MISMATCH
    resp = rest.post("/v1/phases/evomerge:start", json={"parameters": {"source_model": "cognate-mixed"}})
    assert resp.status_code == 400 and "different architectures" in resp.json()["message"], resp.text
    # a modular-arithmetic model is not a language model to merge
    assert rest.post("/v1/phases/bitnet:start", json={"parameters": {"source": "models/none/versions/1"}}
                     ).status_code == 400


def test_unknown_phase_and_out_of_range_parameters_are_clear_client_errors(rest: httpx.Client) -> None:
    resp = rest.post("/v1/phases/nope:start", json={"parameters": {}})
    assert resp.status_code == 400 and "phases/nope" in resp.json()["message"], resp.text
    assert [v["field"] for d in resp.json()["details"] if d["@type"].endswith("BadRequest")
            for v in d["fieldViolations"]] == ["phase"], resp.text
    assert rest.post("/phases/nope/start", json={"phase_name": "nope", "parameters": {}}).status_code == 400
    resp = rest.post("/v1/phases/quietstar:start", json={"parameters": {}})
    assert resp.status_code == 400 and "not implemented" in resp.json()["message"], resp.text
    for phase, params, field in [("cognate", {"max_steps": 0}, "parameters.max_steps"),
                                 ("evomerge", {"generations": 1000}, "parameters.generations"),
                                 ("bitnet", {"activation_bits": 99}, "parameters.activation_bits"),
                                 ("pipeline", {"evomerge": {"population": 0}}, "parameters.evomerge.population")]:
        resp = rest.post(f"/v1/phases/{phase}:start", json={"parameters": params})
        assert resp.status_code == 400, resp.text
        fields = [v["field"] for d in resp.json()["details"] if d["@type"].endswith("BadRequest")
                  for v in d["fieldViolations"]]
        assert field in fields, (phase, resp.json())


def _ternary_model_runs(rest: httpx.Client, version_name: str) -> None:
    from services.forge.bitnet import BitLinear, convert_to_bitnet, dequantize_state_dict, mark_quantized
    from services.training.engine.model import DecoderTransformer

    version = rest.get(f"/v1/{version_name}").json()
    state = torch.load(io.BytesIO(download(rest, version_name)), weights_only=True)
    packed = [k for k in state if k.endswith(".ternary_packed")]
    assert packed and all(state[k].dtype == torch.uint8 for k in packed)
    p = version["parameters"]
    model = convert_to_bitnet(DecoderTransformer(259, width=int(p["model.width"]), layers=int(p["model.layers"]),
                                                 heads=int(p["model.heads"]),
                                                 context_length=int(p["model.context_length"])))
    model.load_state_dict(dequantize_state_dict(state))
    mark_quantized(model).eval()
    for m in (x for x in model.modules() if isinstance(x, BitLinear)):
        scale = m.weight.abs().max()
        assert set(torch.unique(m.weight / scale).tolist()) <= {-1.0, 0.0, 1.0}
    logits = model(torch.randint(0, 256, (2, int(p["model.context_length"]))))
    assert torch.isfinite(logits).all()


@pytest.mark.timeout(600)
def test_pipeline_runs_cognate_evomerge_bitnet_each_consuming_the_previous_output(rest: httpx.Client) -> None:
    run = start(rest, "pipeline", {"cognate": COGNATE, "evomerge": EVOMERGE, "bitnet": BITNET})
    events = watch_run(rest, run["name"], timeout=300)
    assert run_states(events)[-1] == SUCCEEDED, events[-1]
    final = events[-1]["phaseRun"]
    arts, metrics = final["outputs"]["artifacts"], final["outputs"]["metrics"]
    candidates = [arts[f"cognate.candidate_{i}"] for i in (1, 2, 3)]
    evo, bit = arts["evomerge.winner"], arts["bitnet.winner"]
    assert final["outputs"]["modelVersion"] == bit
    generations = [e["log"]["message"] for e in events if "log" in e and e["log"].get("step") == "evomerge.evolve"]
    assert [g.split(":")[0] for g in generations] == ["generation 1/2", "generation 2/2"]
    assert all("best val_loss" in g and "mean" in g for g in generations)

    child = rest.get(f"/v1/{evo}").json()
    assert child["lineage"]["parentVersions"] == candidates  # this run's Cognate output, not an alias
    assert child["lineage"]["mergeMethod"] in ("linear", "slerp", "ties", "dare")
    assert child["parameters"]["merge.method"] == child["lineage"]["mergeMethod"]
    assert '"method"' in child["parameters"]["merge.recipe"]
    assert child["metrics"]["val_loss"] == pytest.approx(metrics["evomerge.val_loss"])
    assert alias(rest, "evomerge") == evo.rsplit("/", 1)[1]

    compressed = rest.get(f"/v1/{bit}").json()
    assert compressed["lineage"]["parentVersions"] == [evo]
    assert 1.6 <= compressed["metrics"]["bits_per_weight"] < 1.7
    assert compressed["metrics"]["source_val_loss"] == pytest.approx(child["metrics"]["val_loss"], rel=1e-5)
    assert int(compressed["artifact"]["sizeBytes"]) < int(child["artifact"]["sizeBytes"])
    assert alias(rest, "bitnet") == bit.rsplit("/", 1)[1]
    _ternary_model_runs(rest, bit)


@pytest.mark.timeout(600)
def test_each_phase_alone_consumes_the_registry_by_model_and_alias(rest: httpx.Client) -> None:
    """cognate → (registry) → evomerge by source_model → (registry) → bitnet by alias: no pipeline."""
    cognate = cognate_run(rest, model="cognate-solo")
    candidates = {cognate["outputs"]["artifacts"][f"candidate_{i}"] for i in (1, 2, 3)}
    run = start(rest, "evomerge", {**EVOMERGE, "source_model": "cognate-solo", "model": "evomerge-solo"})
    events = watch_run(rest, run["name"])
    assert run_states(events)[-1] == SUCCEEDED, events[-1]
    child = events[-1]["phaseRun"]["outputs"]["modelVersion"]
    assert set(rest.get(f"/v1/{child}").json()["lineage"]["parentVersions"]) == candidates
    run = start(rest, "bitnet", {**BITNET, "source": "models/evomerge-solo/versions/winner", "model": "bitnet-solo"})
    events = watch_run(rest, run["name"])
    assert run_states(events)[-1] == SUCCEEDED, events[-1]
    compressed = events[-1]["phaseRun"]["outputs"]["modelVersion"]
    assert rest.get(f"/v1/{compressed}").json()["lineage"]["parentVersions"] == [child]
    _ternary_model_runs(rest, compressed)


def _wait_step(rest: httpx.Client, name: str, step: str, state: str = "SAGA_STEP_STATE_RUNNING",
               timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = rest.get(f"/v1/{name}").json()
        if any(s["name"] == step and s["state"] == state for s in run["steps"]):
            return run
        assert run["state"] not in (SUCCEEDED, FAILED, CANCELLED), run
        assert time.monotonic() < deadline, f"{step} never {state}: {run['steps']}"
        time.sleep(0.1)


@pytest.mark.timeout(600)
def test_cancel_mid_pipeline_compensates_the_whole_chain(rest: httpx.Client) -> None:
    aliases_before = {m: alias(rest, m) for m in ("cognate", "evomerge", "bitnet")}
    run = start(rest, "pipeline", {"cognate": COGNATE, "evomerge": {"population": 64, "generations": 50},
                                   "bitnet": BITNET})
    during = _wait_step(rest, run["name"], "evomerge.evolve")
    candidates = [during["outputs"]["artifacts"][f"cognate.candidate_{i}"] for i in (1, 2, 3)]
    assert alias(rest, "cognate") == during["outputs"]["artifacts"]["cognate.winner"].rsplit("/", 1)[1]

    resp = rest.post(f"/v1/{run['name']}:cancel", json={"reason": "test"})
    assert resp.status_code == 200, resp.text
    events = watch_run(rest, run["name"], timeout=60)
    states = run_states(events)
    assert states[-1] == CANCELLED and "PHASE_RUN_STATE_COMPENSATING" in states, states
    steps = {s["name"]: s for s in events[-1]["phaseRun"]["steps"]}
    for name in ("cognate.create_training_jobs", "cognate.register_model_versions", "cognate.set_winner_alias"):
        assert steps[name]["compensationState"] == "COMPENSATION_STATE_SUCCEEDED", steps[name]
    assert steps["bitnet.quantize"]["state"] == "SAGA_STEP_STATE_SKIPPED"
    # issue 8: nothing left PENDING or RUNNING in a cancelled run (running -> CANCELLED)
    assert not [n for n, s in steps.items() if s["state"] in ("SAGA_STEP_STATE_PENDING", "SAGA_STEP_STATE_RUNNING")]
    for version in candidates:  # no half-registered versions
        assert rest.get(f"/v1/{version}").status_code == 404
    assert {m: alias(rest, m) for m in ("cognate", "evomerge", "bitnet")} == aliases_before


@pytest.mark.timeout(600)
def test_cancel_once_a_cognate_job_succeeded_leaves_no_version_of_the_run(rest: httpx.Client) -> None:
    """Issue 11: a job that already SUCCEEDED is handed to the registry over the bus; a
    cancel at that moment must not leave its version behind, however late the hand-off
    (the hand-off re-reads the run's state, tests/model/test_handoff_withdrawn.py)."""
    model = f"race-{uuid.uuid4().hex[:6]}"
    run = start(rest, "cognate", {**COGNATE, "model": model, "max_steps": 10})
    name = run["name"]
    deadline = time.monotonic() + 180
    while True:  # the first job to succeed; its hand-off is on its way
        jobs = rest.get("/v1/trainingJobs", params={"labelSelector": f"model={model}"}).json().get("trainingJobs", [])
        if any(j["state"] == "TRAINING_JOB_STATE_SUCCEEDED" for j in jobs):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.05)
    resp = rest.post(f"/v1/{name}:cancel", json={"reason": "race"})
    assert resp.status_code == 200 or resp.json()["code"] == 9, resp.text  # may have finished: then nothing to check
    final = rest.get(f"/v1/{name}").json()
    if final["state"] == SUCCEEDED:
        pytest.skip("the run finished before the cancel reached it")
    assert final["state"] == CANCELLED, final
    # late hand-offs: a version may show for an instant (registered, then undone by the
    # hand-off's second read); none may stay
    settle, empty_since, left = time.monotonic() + 20, None, []
    while time.monotonic() < settle:
        listed = rest.get(f"/v1/models/{model}/versions")
        left = [v["name"] for v in listed.json().get("modelVersions", [])] if listed.status_code == 200 else []
        empty_since = (empty_since or time.monotonic()) if not left else None
        if empty_since is not None and time.monotonic() - empty_since > 3:
            break
        time.sleep(0.2)
    assert left == [], f"versions of the cancelled run left behind: {left}"
    assert alias(rest, model) is None


@pytest.mark.timeout(600)
def test_forge_killed_mid_run_resumes_watching_its_jobs_and_completes(rest: httpx.Client, mesh: Mesh) -> None:
    run = start(rest, "cognate", {**COGNATE, "max_steps": 300, "progress_interval": 10})
    during = _wait_step(rest, run["name"], "train")
    jobs = [during["outputs"]["artifacts"][f"training_job_{i}"] for i in (1, 2, 3)]
    wait_job(rest, jobs[0], lambda j: step_of(j) >= 20, timeout=60)
    mesh.kill_service("forge", signal.SIGKILL, restart=False)  # a crash mid-run, no graceful shutdown
    time.sleep(1.0)
    mesh.restart_service("forge")
    events = watch_run(rest, run["name"], timeout=240)
    assert run_states(events)[-1] == SUCCEEDED, events[-1]
    final = events[-1]["phaseRun"]
    # the same three jobs (resumed, not re-created), each trained once to the end
    assert [final["outputs"]["artifacts"][f"training_job_{i}"] for i in (1, 2, 3)] == jobs
    for job in jobs:
        assert step_of(rest.get(f"/v1/{job}").json()) == 300
    train = next(s for s in final["steps"] if s["name"] == "train")
    assert train["attempts"] == 2  # the restarted forge ran the step again, i.e. resumed watching
    labelled = rest.get("/v1/trainingJobs", params={"pageSize": 1000}).json().get("trainingJobs", [])
    assert len([j for j in labelled if j.get("phaseRun") == run["name"]]) == 3


def test_the_seeds_curl_lines_work_unchanged(rest: httpx.Client) -> None:
    """The original API's routes, as its README had them (compatibility bindings)."""
    # curl -X POST http://localhost:8000/phases/cognate/start -H "Content-Type: application/json" \
    #   -d '{"phase_name": "cognate", "parameters": {"max_steps": 100}}'
    resp = rest.post("/phases/cognate/start", json={"phase_name": "cognate", "parameters": {"max_steps": 100}},
                     headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    run = resp.json()
    try:
        assert run["phase"] == "phases/cognate" and run["parameters"]["max_steps"] == 100
        # curl http://localhost:8000/phases/cognate/status
        status = rest.get("/phases/cognate/status")
        assert status.status_code == 200, status.text
        body = status.json()
        assert body["name"] == "phases/cognate" and body["latestRun"] == run["name"]
        assert body["latestRunState"] in ("PHASE_RUN_STATE_PENDING", "PHASE_RUN_STATE_RUNNING")
        assert "stepsTotal" in body["latestRunProgress"]
        # curl http://localhost:8000/models
        models = rest.get("/models")
        assert models.status_code == 200, models.text
        assert models.json() == rest.get("/v1/models").json()
        # the old body with a phase_name that contradicts the path is a client error
        bad = rest.post("/phases/cognate/start", json={"phase_name": "evomerge", "parameters": {}})
        assert bad.status_code == 400, bad.text
        assert rest.post("/phases/cognate/start", json={"phase_name": "cognate", "bogus": 1}).status_code == 400
        assert rest.get("/phases/nope/status").status_code == 404
    finally:
        rest.post(f"/v1/{run['name']}:cancel", json={})
        watch_run(rest, run["name"], timeout=60)
