"""Training through the edge of the real mesh (issue 4): REST, native gRPC, REST streams.

Every job is created, controlled and watched through Envoy only; the one exception is
the worker kill, which finds the worker process under the training service's process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import grpc
import grpc.aio
import httpx
import psutil
import pytest
from google.protobuf import json_format

from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_service_pb2_grpc
from services.launcher.mesh import Mesh

from .conftest import ndjson, step_of, tiny_job, wait_job

pytestmark = pytest.mark.e2e

QUEUED, RUNNING, PAUSED = "TRAINING_JOB_STATE_QUEUED", "TRAINING_JOB_STATE_RUNNING", "TRAINING_JOB_STATE_PAUSED"
SUCCEEDED, CANCELLED = "TRAINING_JOB_STATE_SUCCEEDED", "TRAINING_JOB_STATE_CANCELLED"


# --- helpers --------------------------------------------------------------------------


def create(rest: httpx.Client, body: dict[str, Any], request_id: str | None = None) -> dict[str, Any]:
    params = {"requestId": request_id} if request_id else None
    resp = rest.post("/v1/trainingJobs", json=body, params=params)
    assert resp.status_code == 200, resp.text
    job = resp.json()
    # A free worker may claim the job before the create call answers.
    assert job["name"].startswith("trainingJobs/") and job["state"] in (QUEUED, RUNNING)
    return job


def watch_rest(rest: httpx.Client, name: str, cursor: str = "") -> list[dict[str, Any]]:
    """The whole REST stream of a job (to its terminal event), streamEnd line included."""
    status, lines = ndjson(rest, f"/v1/{name}:watch", params={"cursor": cursor} if cursor else None)
    assert status == 200, lines
    assert "streamEnd" in lines[-1], f"the stream did not end with streamEnd: {lines[-1]}"
    assert lines[-1]["streamEnd"].get("code", 0) == 0, lines[-1]
    return [line for line in lines if "heartbeat" not in line]  # keepalives of a quiet stream


def events_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if "streamEnd" not in line]


def states(events: list[dict[str, Any]]) -> list[str]:
    return [e["stateChanged"]["toState"] for e in events if "stateChanged" in e]


def progress_steps(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["progress"]["step"]) for e in events if "progress" in e]


def as_protos(lines: list[dict[str, Any]]) -> list[ev_pb.TrainingJobEvent]:
    return [json_format.ParseDict(line, ev_pb.TrainingJobEvent()) for line in lines]


def cancel(rest: httpx.Client, name: str) -> dict[str, Any]:
    resp = rest.post(f"/v1/{name}:cancel", json={})
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- create, watch, resume ----------------------------------------------------------------


async def test_rest_created_job_is_watched_alike_by_grpc_and_rest_stream(rest: httpx.Client,
                                                                         channel: grpc.aio.Channel) -> None:
    job = create(rest, tiny_job(maxSteps="40", progressInterval="1"))
    stub = training_service_pb2_grpc.TrainingServiceStub(channel)
    grpc_events = [e async for e in stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=job["name"]), timeout=90)
                   if not e.HasField("heartbeat")]
    rest_lines = watch_rest(rest, job["name"])

    # The same stream over both protocols: same events, same final stream_end.
    assert as_protos(rest_lines) == grpc_events
    assert grpc_events[-1].HasField("stream_end") and grpc_events[-1].stream_end.code == 0
    events = events_of(rest_lines)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert all(e["trainingJob"] == job["name"] and e["cursor"] and e["epoch"] for e in events)
    assert states(events) == [QUEUED, RUNNING, SUCCEEDED]
    assert events[-1]["stateChanged"]["toState"] == SUCCEEDED
    assert progress_steps(events) == list(range(1, 41))
    progress = [e["progress"] for e in events if "progress" in e]
    for p in progress:
        assert int(p["totalSteps"]) == 40
        assert p["fractionDone"] == pytest.approx(int(p["step"]) / 40)
        assert p["trainLoss"] > 0
        assert p["grokfast"]["alpha"] == pytest.approx(0.98) and p["grokfast"]["lamb"] == pytest.approx(2.0)
        assert p["grokfast"]["slowGradientNorm"] > 0 and p["grokfast"]["amplificationRatio"] > 0
    # the model learns on its own training data over 40 steps
    assert progress[-1]["trainLoss"] < progress[0]["trainLoss"]

    done = rest.get(f"/v1/{job['name']}").json()
    assert done["state"] == SUCCEEDED and done["attempts"] == 1
    assert done["finalMetrics"]["train_loss"] == pytest.approx(progress[-1]["trainLoss"])
    assert done["latestCheckpoint"] == f"{job['name']}/checkpoints/40"


async def test_watch_resumed_from_a_cursor_mid_way_gets_exactly_the_rest(rest: httpx.Client,
                                                                          channel: grpc.aio.Channel) -> None:
    job = create(rest, tiny_job(maxSteps="300", progressInterval="1", checkpointInterval="100"))
    stub = training_service_pb2_grpc.TrainingServiceStub(channel)
    # Leave a live gRPC watch at step 5 (the client cancels its call) ...
    head: list[ev_pb.TrainingJobEvent] = []
    call = stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=job["name"]), timeout=90)
    async for event in call:
        head.append(event)
        if event.HasField("progress") and event.progress.step >= 5:
            break
    call.cancel()
    assert head[-1].progress.step == 5
    assert rest.get(f"/v1/{job['name']}").json()["state"] in (RUNNING, SUCCEEDED)
    # ... and carry on over REST from its cursor.
    rest_of_it = watch_rest(rest, job["name"], head[-1].cursor)
    full = watch_rest(rest, job["name"])
    assert head + as_protos(rest_of_it) == as_protos(full)
    assert progress_steps(events_of(rest_of_it)) == list(range(6, 301))

    events = events_of(full)
    for k in (0, len(events) // 2, len(events) - 2):
        after_k = events_of(watch_rest(rest, job["name"], events[k]["cursor"]))
        assert [e["sequence"] for e in after_k] == [e["sequence"] for e in events[k + 1:]]
        assert after_k == events[k + 1:]
    # the cursor of the terminal event: nothing left, the stream ends OK at once
    assert events_of(watch_rest(rest, job["name"], events[-1]["cursor"])) == []


# --- control ------------------------------------------------------------------------------


def test_cancel_stops_a_running_job(rest: httpx.Client) -> None:
    job = create(rest, tiny_job(maxSteps="100000", progressInterval="1", checkpointInterval="100000",
                                evalInterval="100000"))
    wait_job(rest, job["name"], lambda j: j["state"] == RUNNING and step_of(j) >= 3)
    cancel(rest, job["name"])
    events = events_of(watch_rest(rest, job["name"]))
    assert states(events)[-1] == CANCELLED
    applied = [e for e in events if "controlApplied" in e]
    assert len(applied) == 1, applied
    stop_step = int(applied[0]["controlApplied"]["step"])
    after = progress_steps(events[events.index(applied[0]):])
    assert after == [] and max(progress_steps(events)) == stop_step < 100_000
    assert [e["stateChanged"].get("reason", "") for e in events if "stateChanged" in e][-1]
    time.sleep(0.5)
    stopped = rest.get(f"/v1/{job['name']}").json()
    assert stopped["state"] == CANCELLED and step_of(stopped) == stop_step and not stopped.get("worker")
    again = rest.post(f"/v1/{job['name']}:cancel", json={})
    assert again.status_code == 400 and again.json()["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]


def test_pause_then_resume_continues_from_the_checkpoint(rest: httpx.Client) -> None:
    job = create(rest, tiny_job(maxSteps="400", progressInterval="1", checkpointInterval="1000",
                                evalInterval="100"))
    wait_job(rest, job["name"], lambda j: j["state"] == RUNNING and step_of(j) >= 3)
    resp = rest.post(f"/v1/{job['name']}:pause", json={})
    assert resp.status_code == 200, resp.text
    paused = wait_job(rest, job["name"], lambda j: j["state"] == PAUSED)
    pause_step = step_of(paused)
    assert 3 <= pause_step < 400 and not paused.get("worker")
    time.sleep(0.5)
    assert step_of(rest.get(f"/v1/{job['name']}").json()) == pause_step  # paused means no progress

    resp = rest.post(f"/v1/{job['name']}:resume", json={})
    assert resp.status_code == 200, resp.text
    events = events_of(watch_rest(rest, job["name"]))
    assert states(events) == [QUEUED, RUNNING, PAUSED, QUEUED, RUNNING, SUCCEEDED]
    ckpts = [e["checkpointWritten"] for e in events if "checkpointWritten" in e]
    [pause_ckpt] = [c for c in ckpts if c["trigger"] == "CHECKPOINT_TRIGGER_PAUSE"]
    assert int(pause_ckpt["step"]) == pause_step
    paused_at = next(i for i, e in enumerate(events) if e.get("stateChanged", {}).get("toState") == PAUSED)
    assert progress_steps(events[:paused_at]) == list(range(1, pause_step + 1))
    # after the resume the steps continue at pause_step + 1: no restart from 0
    assert progress_steps(events[paused_at:]) == list(range(pause_step + 1, 401))
    done = rest.get(f"/v1/{job['name']}").json()
    assert done["state"] == SUCCEEDED and done["attempts"] == 2 and step_of(done) == 400


def test_live_grokfast_change_shows_in_events_and_later_progress(rest: httpx.Client) -> None:
    job = create(rest, tiny_job(maxSteps="100000", progressInterval="1", checkpointInterval="100000",
                                evalInterval="100000"))
    wait_job(rest, job["name"], lambda j: j["state"] == RUNNING and step_of(j) >= 5)
    resp = rest.post(f"/v1/{job['name']}:adjust", json={"grokfastAlpha": 0.9, "grokfastLamb": 1.5})
    assert resp.status_code == 200, resp.text
    wait_job(rest, job["name"], lambda j: j["progress"]["grokfast"]["alpha"] == pytest.approx(0.9))
    cancel(rest, job["name"])
    events = events_of(watch_rest(rest, job["name"]))
    changes = [e for e in events if "controlApplied" in e and "grokfastAlpha" in e["controlApplied"]]
    assert len(changes) == 1, changes
    change = changes[0]["controlApplied"]
    assert change["grokfastAlpha"] == pytest.approx(0.9) and change["grokfastLamb"] == pytest.approx(1.5)
    at = events.index(changes[0])
    before = [e["progress"]["grokfast"] for e in events[:at] if "progress" in e]
    after = [e["progress"]["grokfast"] for e in events[at:] if "progress" in e]
    assert before and after
    assert all((g["alpha"], g["lamb"]) == (pytest.approx(0.98), pytest.approx(2.0)) for g in before)
    assert all((g["alpha"], g["lamb"]) == (pytest.approx(0.9), pytest.approx(1.5)) for g in after)
    assert progress_steps(events[at:])[0] >= int(change["step"])


def test_retried_create_with_the_same_request_id_makes_one_job(rest: httpx.Client) -> None:
    request_id = str(uuid.uuid4())
    suite = uuid.uuid4().hex[:8]
    body = tiny_job(maxSteps="20")
    body["labels"] = {"suite": suite}
    first = create(rest, body, request_id)
    second = rest.post("/v1/trainingJobs", json=body, params={"requestId": request_id})
    assert second.status_code == 200, second.text
    assert second.json()["name"] == first["name"] and second.json()["requestId"] == request_id
    other = create(rest, body, str(uuid.uuid4()))  # a different request id is a different job
    assert other["name"] != first["name"]
    listed = rest.get("/v1/trainingJobs", params={"labelSelector": f"suite={suite}", "pageSize": 1000}).json()
    assert sorted(j["name"] for j in listed["trainingJobs"]) == sorted([first["name"], other["name"]])
    for name in (first["name"], other["name"]):
        assert states(events_of(watch_rest(rest, name)))[-1] == SUCCEEDED


# --- recovery --------------------------------------------------------------------------------


def worker_pid(mesh: Mesh, worker: str) -> int:
    """The pid of worker ``worker-<index>-<pid>``, checked to be a child of the training service."""
    pid = int(worker.rpartition("-")[2])
    children = {p.pid for p in psutil.Process(mesh.process("training").pid).children(recursive=True)}
    assert pid in children, f"{worker} is not a process of the training service ({children})"
    return pid


def test_killed_workers_job_completes_on_another_with_the_same_result(rest: httpx.Client, mesh: Mesh) -> None:
    spec = {"maxSteps": "500", "progressInterval": "5", "checkpointInterval": "20", "evalInterval": "100",
            "seed": "11"}
    job = create(rest, tiny_job(**spec))
    running = wait_job(rest, job["name"], lambda j: j["state"] == RUNNING and bool(j.get("latestCheckpoint")))
    assert step_of(running) < 400, "the job ran too far before the kill"
    victim = running["worker"]
    os.kill(worker_pid(mesh, victim), signal.SIGKILL)
    killed_at = step_of(running)

    events = events_of(watch_rest(rest, job["name"]))
    done = rest.get(f"/v1/{job['name']}").json()
    assert done["state"] == SUCCEEDED and done["attempts"] >= 2 and step_of(done) == 500
    lapsed = [e["stateChanged"] for e in events if "stateChanged" in e
              and "heartbeat" in e["stateChanged"].get("reason", "")]
    assert lapsed, [e["stateChanged"] for e in events if "stateChanged" in e]
    assert lapsed[0]["fromState"] == RUNNING
    assert lapsed[0].get("worker") != victim
    # It resumed from a checkpoint (every 20 steps, progress every 5), not from step 0.
    lapse_at = next(i for i, e in enumerate(events) if "heartbeat" in e.get("stateChanged", {}).get("reason", ""))
    after = progress_steps(events[lapse_at:])
    assert after[0] >= 25 and after[0] % 20 == 5 and after[0] <= killed_at + 5, (killed_at, after[:3])
    assert after == list(range(after[0], 501, 5))

    # Same seed, same spec, uninterrupted: the same final result.
    reference = create(rest, tiny_job(**spec))
    watch_rest(rest, reference["name"])
    expected = rest.get(f"/v1/{reference['name']}").json()["finalMetrics"]
    assert done["finalMetrics"]["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    assert done["finalMetrics"]["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)


# --- errors ----------------------------------------------------------------------------------


def violations(body: dict[str, Any]) -> list[str]:
    fields: list[str] = []
    for detail in body.get("details", []):
        if detail["@type"].endswith("google.rpc.BadRequest"):
            fields += [v["field"] for v in detail["fieldViolations"]]
    return fields


@pytest.mark.parametrize(("spec", "field"), [
    ({"model": {"layers": 1, "width": 32, "heads": 0, "contextLength": 4}}, "training_job.spec.model.heads"),
    ({"model": {"layers": 1, "width": 30, "heads": 4, "contextLength": 4}}, "training_job.spec.model"),
    ({"optimizer": {"learningRate": -0.1}}, "training_job.spec.optimizer.learning_rate"),
    ({"task": {"kind": "TASK_KIND_UNSPECIFIED"}}, "training_job.spec.task.kind"),
    ({"task": {"kind": "TASK_KIND_COGNATE", "dataset": {"path": "/nonexistent/e2e.txt"}},
      "model": {"layers": 1, "width": 32, "heads": 2, "contextLength": 8}}, "training_job.spec.task.dataset.path"),
    ({"batchSize": 0}, "training_job.spec.batch_size"),
    ({"task": {"kind": "TASK_KIND_COGNATE", "dataset": {"builtin": "BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS",
                                                        "tokenizer": "TOKENIZER_CHAR"}},
      "model": {"layers": 1, "width": 32, "heads": 2, "contextLength": 8, "vocabSize": 3}},
     "training_job.spec.model.vocab_size"),
])
def test_bad_spec_over_rest_is_400_naming_the_field(rest: httpx.Client, spec: dict[str, Any], field: str) -> None:
    resp = rest.post("/v1/trainingJobs", json=tiny_job(**spec))
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and body["message"]
    assert field in violations(body), body
    # A dataset outside the data roots (or missing: the same answer) has its own reason.
    reason = "DATASET_NOT_ALLOWED" if field.endswith("dataset.path") else "INVALID_ARGUMENT"
    assert any(d["@type"].endswith("google.rpc.ErrorInfo") and d["reason"] == reason
               for d in body["details"]), body


def test_a_tokenizer_char_job_its_dataset_cannot_fit_is_400_at_create(rest: httpx.Client, mesh: Mesh) -> None:
    """Defect: TOKENIZER_CHAR with vocabSize 3, or over a file of more than 1,024 distinct
    characters, was 200 at create and FAILED in the worker. Through the edge now: 400, a
    google.rpc.Status naming the field and the size needed, and no job."""
    root = mesh.config.data_dir / "training" / "datasets"  # type: ignore[operator]
    root.mkdir(parents=True, exist_ok=True)
    small = root / f"few-{uuid.uuid4().hex[:6]}.txt"
    small.write_text("abc abc\ncab\n" * 20)  # 'a', 'b', 'c', ' ': 4 characters, so 7
    many = root / f"many-{uuid.uuid4().hex[:6]}.txt"
    many.write_text("".join(chr(0x4E00 + i) for i in range(1100)) + "\n")
    model = {"layers": 1, "width": 32, "heads": 2, "contextLength": 8}
    before = rest.get("/v1/trainingJobs", params={"pageSize": 1000}).json().get("trainingJobs", [])
    for path, vocab, field, words in ((small, 3, "training_job.spec.model.vocab_size", ">= 7"),
                                      (many, 0, "training_job.spec.task.dataset.tokenizer", "at most 1024")):
        body = tiny_job(task={"kind": "TASK_KIND_COGNATE", "dataset": {"path": str(path), "tokenizer": "TOKENIZER_CHAR"}},
                        model={**model, "vocabSize": vocab}, maxSteps="5")
        resp = rest.post("/v1/trainingJobs", json=body)
        assert resp.status_code == 400, resp.text
        status = resp.json()
        assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0], status
        described = {v["field"]: v["description"] for d in status["details"]
                     if d["@type"].endswith("google.rpc.BadRequest") for v in d["fieldViolations"]}
        assert list(described) == [field] and words in described[field], status
    after = rest.get("/v1/trainingJobs", params={"pageSize": 1000}).json().get("trainingJobs", [])
    assert [j["name"] for j in after] == [j["name"] for j in before]


def test_unknown_job_is_404_for_get_cancel_and_watch(rest: httpx.Client) -> None:
    name = f"trainingJobs/nope{uuid.uuid4().hex[:8]}"
    for resp in (rest.get(f"/v1/{name}"), rest.post(f"/v1/{name}:cancel", json={}),
                 rest.post(f"/v1/{name}:adjust", json={"learningRate": 0.01})):
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    status, lines = ndjson(rest, f"/v1/{name}:watch")
    assert status == 404 and lines[0]["code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_grpc_watch_of_an_unknown_job_is_not_found(channel: grpc.aio.Channel) -> None:
    stub = training_service_pb2_grpc.TrainingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name="trainingJobs/nope-e2e"), timeout=10):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await asyncio.sleep(0)


# --- the GrokFast paper through the API (issue 11) -------------------------------------


def test_paper_settings_over_rest_train_exactly_like_the_papers_loop(rest: httpx.Client) -> None:
    """The paper's job created by REST runs the reference code's model, data order and filter:
    its per-step training losses equal the paper's loop's (benchmarks/_paper_reference.py,
    which shares no code with the engine). The full run to 95 % is ``make bench``."""
    import torch

    from benchmarks._paper_reference import reference_run
    from benchmarks.grokfast_paper import paper_job

    steps = 12  # crosses an epoch boundary (10 steps per epoch) and the 10-step warmup
    body = paper_job(0, steps)
    body["spec"].update(progressInterval="1", evalInterval="10")
    job = create(rest, body)
    status, lines = ndjson(rest, f"/v1/{job['name']}:watch", timeout=120)
    assert status == 200 and lines[-1].get("streamEnd", {}).get("code", 0) == 0, lines[-1]
    api = {int(e["progress"]["step"]): e["progress"]["trainLoss"] for e in lines if "progress" in e}
    assert sorted(api) == list(range(1, steps + 1)), sorted(api)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the mesh's workers
    try:
        ref = reference_run(seed=0, max_steps=steps, target=None)
    finally:
        torch.set_num_threads(threads)
    assert [api[s] for s in range(1, steps + 1)] == pytest.approx(ref.losses, rel=1e-5, abs=1e-6)
    evals = [e["evalCompleted"] for e in lines if "evalCompleted" in e]
    assert evals and evals[0]["accuracy"] == pytest.approx(ref.curve[0][1], abs=1e-6)


async def test_a_tokenizer_char_model_trains_registers_and_exports_to_onnx_through_the_edge(
        rest: httpx.Client, mesh: Mesh) -> None:
    """Issue 8, TOKENIZER_CHAR and ONNX end to end as a user drives them: a REST-created
    char job trains, the registry records its vocabulary, its ONNX export (through the
    edge) runs in onnxruntime on text encoded with that vocabulary and matches the
    PyTorch model built from the registered weights."""
    import io

    import numpy as np
    import onnxruntime
    import torch

    from agentforge.model.v1 import model_service_pb2_grpc
    from agentforge.model.v1 import model_version_pb2 as mv
    from agentforge.model.v1 import request_response_pb2 as mrr
    from services.forge.modelio import build_decoder, tokenizer_of

    root = mesh.config.data_dir / "training" / "datasets"  # type: ignore[operator]
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"chars-{uuid.uuid4().hex[:6]}.txt"
    data.write_text("the cat sat on the mat\nthe dog ate the log\nten hens in a pen\n" * 12)
    model_id = f"chars-{uuid.uuid4().hex[:6]}"
    body = tiny_job(task={"kind": "TASK_KIND_COGNATE", "dataset": {"path": str(data), "tokenizer": "TOKENIZER_CHAR"}},
                    model={"layers": 1, "width": 32, "heads": 2, "contextLength": 8}, maxSteps="20",
                    checkpointInterval="20", evalInterval="10")
    body["labels"] = {"model": model_id}
    created = rest.post("/v1/trainingJobs", json=body)
    assert created.status_code == 200, created.text
    wait_job(rest, created.json()["name"], lambda j: j["state"] == "TRAINING_JOB_STATE_SUCCEEDED", timeout=240)

    deadline = time.monotonic() + 60
    while (got := rest.get(f"/v1/models/{model_id}/versions/latest")).status_code != 200:
        assert got.status_code == 404 and time.monotonic() < deadline, got.text
        time.sleep(0.1)
    version = got.json()
    vocabulary = "".join(sorted(set(data.read_text()) - {"\n"}))
    assert version["parameters"]["task.tokenizer"] == "char"
    assert version["parameters"]["task.tokenizer.vocabulary"] == vocabulary

    started = rest.post(f"/v1/{version['name']}:export", json={"format": "ARTIFACT_FORMAT_ONNX"})
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 120
    while (export := rest.get(f"/v1/{started.json()['name']}").json())["state"] not in (
            "MODEL_EXPORT_STATE_SUCCEEDED", "MODEL_EXPORT_STATE_FAILED"):
        assert time.monotonic() < deadline, export
        time.sleep(0.2)
    assert export["state"] == "MODEL_EXPORT_STATE_SUCCEEDED", export

    async def download(fmt: int) -> bytes:
        out = bytearray()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.edge_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            async for part in stub.DownloadModelArtifact(mrr.DownloadModelArtifactRequest(name=version["name"],
                                                                                          format=fmt)):
                out += part.data
        return bytes(out)

    onnx_bytes = await download(mv.ARTIFACT_FORMAT_ONNX)
    state = torch.load(io.BytesIO(await download(0)), weights_only=True)  # the artifact itself
    params = version["parameters"]
    model = build_decoder(state, params)
    tokenizer = tokenizer_of(params)
    tokens = torch.tensor([tokenizer.encode("the cat ate", bos=True, eos=False)[:8]])  # type: ignore[union-attr]
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got_logits = session.run(["logits"], {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        want = model(tokens).numpy()
    assert got_logits.shape == (1, tokens.shape[1], len(vocabulary) + 3)
    assert np.allclose(got_logits, want, atol=1e-4, rtol=1e-3)
