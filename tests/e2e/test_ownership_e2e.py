"""Trainers control only their own jobs and phase runs (issue 9), through the real edge.

Two trainer subjects, ``alice-…`` and ``bob-…``, each with a token of their own: what
alice creates names her as its ``creator``; bob controlling it — cancel, pause, resume,
adjust, checkpoint over REST, cancel over gRPC — gets 403 / PERMISSION_DENIED with reason
``NOT_RESOURCE_OWNER``; alice and an operator may. A phase run's training jobs belong to
whoever started the run (docs/security.md).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from google.protobuf import json_format

from agentforge.training.v1 import request_response_pb2 as training_rr
from agentforge.training.v1 import training_service_pb2_grpc
from services.launcher.mesh import Mesh
from services.shared import auth
from tests.support import error_details

from .conftest import tiny_job, wait_job

pytestmark = pytest.mark.e2e


def _who(name: str) -> tuple[str, dict[str, str]]:
    subject = f"{name}-{uuid.uuid4().hex[:6]}"
    return subject, {"authorization": f"Bearer {auth.mint_token('trainer', subject=subject, ttl_s=900)}"}


def _reason(resp: httpx.Response) -> dict[str, Any]:
    infos = [d for d in resp.json().get("details", []) if d["@type"].endswith("ErrorInfo")]
    assert infos, resp.text
    return infos[0]


def _denied(resp: httpx.Response, resource: str, creator: str) -> None:
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["code"] == 7, body
    info = _reason(resp)
    assert info["reason"] == "NOT_RESOURCE_OWNER", info
    assert info["metadata"]["resource"] == resource and info["metadata"]["creator"] == creator, info
    assert creator in body["message"] and "operator" in body["message"], body


def test_a_trainer_controls_only_their_own_jobs_operators_any(rest: httpx.Client) -> None:
    alice, as_alice = _who("alice")
    bob, as_bob = _who("bob")
    operator = {"authorization": f"Bearer {auth.mint_token('operator', subject='op-' + uuid.uuid4().hex[:6])}"}

    created = rest.post("/v1/trainingJobs", json=tiny_job(maxSteps="100000"), headers=as_alice)
    assert created.status_code == 200, created.text
    job = created.json()
    name = job["name"]
    assert job["creator"] == alice
    try:
        wait_job(rest, name, lambda j: j["state"] == "TRAINING_JOB_STATE_RUNNING", timeout=120)
        for verb, body in [("cancel", {}), ("pause", {}), ("resume", {}), ("adjust", {"learningRate": 0.01}),
                           ("checkpoint", {})]:
            _denied(rest.post(f"/v1/{name}:{verb}", json=body, headers=as_bob), name, alice)
        # deleting is for admins only, whoever created the job
        deleted = rest.delete(f"/v1/{name}", headers=as_bob)
        assert deleted.status_code == 403 and _reason(deleted)["reason"] == "ROLE_REQUIRED", deleted.text
        assert rest.get(f"/v1/{name}", headers=as_bob).json()["state"] == "TRAINING_JOB_STATE_RUNNING"

        # the creator may
        adjusted = rest.post(f"/v1/{name}:adjust", json={"learningRate": 0.002}, headers=as_alice)
        assert adjusted.status_code == 200, adjusted.text
        # an operator may control anyone's
        cancelled = rest.post(f"/v1/{name}:cancel", json={}, headers=operator)
        assert cancelled.status_code == 200, cancelled.text
        wait_job(rest, name, lambda j: j["state"] == "TRAINING_JOB_STATE_CANCELLED", timeout=60)
    finally:
        rest.post(f"/v1/{name}:cancel", json={}, headers=operator)

    queued = rest.post("/v1/trainingJobs", json=tiny_job(), headers=as_bob).json()
    assert queued["creator"] == bob
    own = rest.post(f"/v1/{queued['name']}:cancel", json={}, headers=as_bob)
    assert own.status_code == 200 or own.json()["code"] == 9, own.text  # it may have ended already


async def test_over_grpc_another_trainers_cancel_is_permission_denied(mesh: Mesh) -> None:
    alice, as_alice = _who("alice")
    _, as_bob = _who("bob")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.edge_port}") as channel:
        stub = training_service_pb2_grpc.TrainingServiceStub(channel)
        body = tiny_job()
        request = training_rr.CreateTrainingJobRequest()
        json_format.ParseDict({"trainingJob": body}, request)
        job = await stub.CreateTrainingJob(request, metadata=tuple(as_alice.items()), timeout=30)
        assert job.creator == alice
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CancelTrainingJob(training_rr.CancelTrainingJobRequest(name=job.name),
                                         metadata=tuple(as_bob.items()), timeout=30)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info, _ = error_details(err.value)
        assert info is not None and info.reason == "NOT_RESOURCE_OWNER"
        try:
            await stub.CancelTrainingJob(training_rr.CancelTrainingJobRequest(name=job.name),
                                         metadata=tuple(as_alice.items()), timeout=30)
        except grpc.aio.AioRpcError as exc:  # it finished first: fine, it was allowed
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc


COGNATE = {"candidates": 1, "max_steps": 100000, "batch_size": 8, "width": 32, "heads": 2, "layers": 1,
           "context_length": 32, "progress_interval": 5, "model": "owner-test"}


@pytest.mark.timeout(300)
def test_a_phase_run_and_its_jobs_belong_to_whoever_started_it(rest: httpx.Client) -> None:
    alice, as_alice = _who("alice")
    _, as_bob = _who("bob")
    resp = rest.post("/v1/phases/cognate:start", json={"parameters": COGNATE, "requestId": str(uuid.uuid4())},
                     headers=as_alice)
    assert resp.status_code == 200, resp.text
    run = resp.json()
    assert run["creator"] == alice
    name = run["name"]
    try:
        job_name = ""
        for _ in range(600):
            current = rest.get(f"/v1/{name}").json()
            job_name = current.get("outputs", {}).get("trainingJob", "")
            if job_name:
                break
            time.sleep(0.1)
        assert job_name, current
        job = rest.get(f"/v1/{job_name}").json()
        assert job["creator"] == alice and job["phaseRun"] == name, job  # created by the forge for alice
        _denied(rest.post(f"/v1/{job_name}:pause", json={}, headers=as_bob), job_name, alice)
        _denied(rest.post(f"/v1/{name}:cancel", json={}, headers=as_bob), name, alice)
        assert rest.get(f"/v1/{name}").json()["state"] not in ("PHASE_RUN_STATE_CANCELLED",
                                                              "PHASE_RUN_STATE_COMPENSATING")
        cancelled = rest.post(f"/v1/{name}:cancel", json={}, headers=as_alice)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "PHASE_RUN_STATE_CANCELLED", cancelled.json()
        # the forge cancelled alice's job for her (the service may control any job)
        wait_job(rest, job_name, lambda j: j["state"] == "TRAINING_JOB_STATE_CANCELLED", timeout=60)
    finally:
        rest.post(f"/v1/{name}:cancel", json={})
