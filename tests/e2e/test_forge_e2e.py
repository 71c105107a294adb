"""The main job end to end: a Cognate phase run over REST trains, registers and aliases a model.

The forge saga spans three services (forge → training → model, over the bus for the
hand-off); these tests see it only through the edge.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from .conftest import ndjson, step_of, wait_job

pytestmark = pytest.mark.e2e

PARAMS = {"max_steps": 30, "batch_size": 8, "width": 32, "heads": 2, "layers": 1, "context_length": 32,
          "progress_interval": 5}
RUN_SUCCEEDED, RUN_CANCELLED = "PHASE_RUN_STATE_SUCCEEDED", "PHASE_RUN_STATE_CANCELLED"


def start_cognate(rest: httpx.Client, **overrides: Any) -> dict[str, Any]:
    body = {"parameters": {**PARAMS, **overrides}, "requestId": str(uuid.uuid4())}
    resp = rest.post("/v1/phases/cognate:start", json=body)
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert run["name"].startswith("phaseRuns/") and run["phase"] == "phases/cognate"
    return run


def watch_run(rest: httpx.Client, name: str, timeout: float = 90.0) -> list[dict[str, Any]]:
    """The run's whole REST stream, checked to end with streamEnd OK; the events."""
    status, lines = ndjson(rest, f"/v1/{name}:watch", timeout=timeout)
    assert status == 200, lines
    assert "streamEnd" in lines[-1] and lines[-1]["streamEnd"].get("code", 0) == 0, lines[-1]
    events = lines[:-1]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    return events


def run_states(events: list[dict[str, Any]]) -> list[str]:
    return [e["stateChanged"]["toState"] for e in events if "stateChanged" in e]


def test_cognate_run_trains_registers_a_ready_version_and_moves_the_alias(rest: httpx.Client) -> None:
    run = start_cognate(rest)
    events = watch_run(rest, run["name"])
    assert run_states(events)[-1] == RUN_SUCCEEDED, events[-1]
    final = events[-1]["phaseRun"]
    assert final["state"] == RUN_SUCCEEDED
    assert all(step["state"] == "SAGA_STEP_STATE_SUCCEEDED" for step in final["steps"]), final["steps"]
    # progress was relayed from the training job while it ran
    relayed = [e["progress"] for e in events if "progress" in e and e["progress"].get("currentStep") == "train"]
    assert relayed and all(re.match(r"step \d+/30 loss [0-9.]+", p["message"]) for p in relayed), relayed

    outputs = final["outputs"]
    job_name, version_name = outputs["trainingJob"], outputs["modelVersion"]
    assert re.fullmatch(r"models/cognate/versions/\d+", version_name), outputs
    job = rest.get(f"/v1/{job_name}").json()
    assert job["state"] == "TRAINING_JOB_STATE_SUCCEEDED" and step_of(job) == PARAMS["max_steps"]
    assert job["phaseRun"] == run["name"] and job["phase"] == "phases/cognate"
    assert job["spec"]["model"] == {"layers": 1, "width": 32, "heads": 2, "contextLength": 32}

    resp = rest.get(f"/v1/{version_name}")
    assert resp.status_code == 200, resp.text
    version = resp.json()
    assert version["name"] == version_name and version["state"] == "MODEL_VERSION_STATE_READY"
    assert version["lineage"]["trainingJob"] == job_name
    assert version["lineage"]["checkpoint"].startswith(f"{job_name}/checkpoints/")
    artifact = version["artifact"]
    assert artifact["state"] == "ARTIFACT_STATE_READY" and re.fullmatch(r"[0-9a-f]{64}", artifact["sha256"])
    assert int(artifact["sizeBytes"]) > 0
    # the registered weights come from the training job's final checkpoint (the registry
    # stores its weights as a state dict, recording the source checkpoint's sha256)
    checkpoints = rest.get(f"/v1/{job_name}/checkpoints").json()["checkpoints"]
    final_ckpt = next(c for c in checkpoints if c.get("final"))
    assert version["lineage"]["checkpoint"] == final_ckpt["name"]
    assert version["parameters"]["checkpoint.sha256"] == final_ckpt["sha256"]
    # and the artifact's bytes, downloaded over REST, hash to its sha256
    status, lines = ndjson(rest, f"/v1/{version_name}:download", params={"chunkSize": 65536})
    assert status == 200 and lines[-1].get("streamEnd", {"code": -1}).get("code", 0) == 0, lines[-1:]
    chunks = lines[:-1]
    assert [int(c.get("offset", 0)) for c in chunks] == sorted(int(c.get("offset", 0)) for c in chunks)
    data = b"".join(base64.b64decode(c["data"]) for c in chunks)
    assert len(data) == int(artifact["sizeBytes"]) and hashlib.sha256(data).hexdigest() == artifact["sha256"]

    model = rest.get("/v1/models/cognate").json()
    assert model["aliases"]["cognate-latest"] == version_name.rpartition("/")[2], model
    assert "cognate-latest" in version["aliases"] or "cognate-latest" in \
        rest.get(f"/v1/{version_name}").json().get("aliases", [])


def test_cancelling_a_cognate_run_mid_training_cancels_its_training_job(rest: httpx.Client) -> None:
    before = rest.get("/v1/models/cognate")
    alias_before = before.json().get("aliases", {}).get("cognate-latest") if before.status_code == 200 else None

    run = start_cognate(rest, max_steps=100_000, progress_interval=1)
    deadline = time.monotonic() + 60
    while not (job_name := rest.get(f"/v1/{run['name']}").json().get("outputs", {}).get("trainingJob")):
        assert time.monotonic() < deadline, "the run never created its training job"
        time.sleep(0.05)
    wait_job(rest, job_name, lambda j: j["state"] == "TRAINING_JOB_STATE_RUNNING" and step_of(j) >= 2)
    try:
        started = time.monotonic()
        resp = rest.post(f"/v1/{run['name']}:cancel", json={})
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < 10
        events = watch_run(rest, run["name"], timeout=20)
        _check_cancelled(rest, events, job_name, alias_before)
    finally:  # cleanup, not a workaround: never leave a 100k-step job holding a worker
        job = rest.get(f"/v1/{job_name}").json()
        if job["state"] not in ("TRAINING_JOB_STATE_CANCELLED", "TRAINING_JOB_STATE_SUCCEEDED",
                                "TRAINING_JOB_STATE_FAILED"):
            rest.post(f"/v1/{job_name}:cancel", json={})


def _check_cancelled(rest: httpx.Client, events: list[dict[str, Any]], job_name: str,
                     alias_before: str | None) -> None:
    states = run_states(events)
    assert states[-1] == RUN_CANCELLED and "PHASE_RUN_STATE_COMPENSATING" in states, states
    final = events[-1]["phaseRun"]
    steps = {step["name"]: step for step in final["steps"]}
    create_step = steps["create_training_job"]
    assert create_step["compensationState"] == "COMPENSATION_STATE_SUCCEEDED", final["steps"]
    assert not final.get("outputs", {}).get("modelVersion")

    job = wait_job(rest, job_name, lambda j: j["state"] != "TRAINING_JOB_STATE_RUNNING", timeout=10)
    assert job["state"] == "TRAINING_JOB_STATE_CANCELLED" and step_of(job) < 100_000
    after = rest.get("/v1/models/cognate")
    alias_after = after.json().get("aliases", {}).get("cognate-latest") if after.status_code == 200 else None
    assert alias_after == alias_before  # the cancelled run moved no alias
