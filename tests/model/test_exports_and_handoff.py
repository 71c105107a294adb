"""Exports of real torch weights, and the training hand-off over the bus."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import grpc
import grpc.aio
import pytest
import torch

from agentforge.events.v1 import event_pb2
from agentforge.model.v1 import model_export_pb2 as me
from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_pb2 as tj
from services.model.artifacts import sha256_file
from services.shared.bus import Envelope
from services.training.engine.model import DecoderTransformer

from .conftest import Registry, make_model, make_version, upload_all


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


async def download(registry: Registry, name: str, fmt: int = 0) -> bytes:
    out = bytearray()
    sha = ""
    async for part in registry.stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(name=name, format=fmt)):
        if part.HasField("stream_end"):
            assert part.stream_end.code == 0
            continue
        out += part.data
        sha = part.sha256
    assert hashlib.sha256(out).hexdigest() == sha
    return bytes(out)


async def finished(registry: Registry, name: str) -> me.ModelExport:
    async with asyncio.timeout(60):
        while True:
            export = await registry.stub.GetModelExport(rr.GetModelExportRequest(name=name))
            if export.state in (me.MODEL_EXPORT_STATE_SUCCEEDED, me.MODEL_EXPORT_STATE_FAILED):
                return export
            await asyncio.sleep(0.05)


async def test_state_dict_and_safetensors_exports_hold_the_same_tensors(registry: Registry) -> None:
    from safetensors.torch import load

    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).state_dict()
    await make_model(registry.stub, "exp")
    v = await make_version(registry.stub, "exp")
    await upload_all(registry.stub, v.name, state_dict_bytes(state))
    started = await registry.stub.ExportModelVersion(rr.ExportModelVersionRequest(
        name=v.name, format=mv.ARTIFACT_FORMAT_STATE_DICT))
    assert started.name == f"{v.name}/exports/state-dict"
    export = await finished(registry, started.name)
    assert export.state == me.MODEL_EXPORT_STATE_SUCCEEDED and export.size_bytes > 0
    blob = await download(registry, v.name, mv.ARTIFACT_FORMAT_STATE_DICT)
    assert hashlib.sha256(blob).hexdigest() == export.sha256
    loaded = torch.load(io.BytesIO(blob), weights_only=True)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    again = await registry.stub.ExportModelVersion(rr.ExportModelVersionRequest(
        name=v.name, format=mv.ARTIFACT_FORMAT_STATE_DICT))
    assert again.sha256 == export.sha256  # idempotent: the existing export is returned

    st = await registry.stub.ExportModelVersion(rr.ExportModelVersionRequest(
        name=v.name, format=mv.ARTIFACT_FORMAT_SAFETENSORS))
    assert (await finished(registry, st.name)).state == me.MODEL_EXPORT_STATE_SUCCEEDED
    tensors = load(await download(registry, v.name, mv.ARTIFACT_FORMAT_SAFETENSORS))
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    listed = await registry.stub.ListModelExports(rr.ListModelExportsRequest(parent=v.name))
    assert {e.name.rsplit("/", 1)[1] for e in listed.model_exports} == {"state-dict", "safetensors"}


async def test_torchscript_and_onnx_without_architecture_fail_with_the_reason(registry: Registry) -> None:
    await make_model(registry.stub, "ts")
    v = await make_version(registry.stub, "ts")
    await upload_all(registry.stub, v.name, state_dict_bytes(torch.nn.Linear(2, 2).state_dict()))
    for fmt in (mv.ARTIFACT_FORMAT_TORCHSCRIPT, mv.ARTIFACT_FORMAT_ONNX):
        started = await registry.stub.ExportModelVersion(rr.ExportModelVersionRequest(name=v.name, format=fmt))
        export = await finished(registry, started.name)
        assert export.state == me.MODEL_EXPORT_STATE_FAILED and "architecture" in export.error.message
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in registry.stub.DownloadModelArtifact(rr.DownloadModelArtifactRequest(
                    name=v.name, format=fmt)):
                pass
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


DECODER_PARAMETERS = {"architecture": "decoder_transformer", "model.layers": "2", "model.width": "16",
                      "model.heads": "2", "model.context_length": "6"}


@pytest.mark.parametrize("block_style", ["pre_ln", "grokfast_paper"])
async def test_every_export_format_loads_and_runs_like_the_pytorch_model(registry: Registry,
                                                                         block_style: str) -> None:
    """Issue 8: each format the contract lists is produced, then loaded with its own
    loader (torch.load / safetensors / torch.jit.load / onnxruntime) and run on token
    batches of several shapes: the logits match the PyTorch model's."""
    import numpy as np
    import onnxruntime
    from safetensors.torch import load

    torch.manual_seed(3)
    model = DecoderTransformer(vocab_size=13, width=16, layers=2, heads=2,
                               context_length=7 if block_style == "grokfast_paper" else 6,
                               block_style=block_style).eval()
    model_id = f"every-{block_style.replace('_', '-')}"
    await make_model(registry.stub, model_id)
    v = await make_version(registry.stub, model_id, parameters=DECODER_PARAMETERS)
    await upload_all(registry.stub, v.name, state_dict_bytes(model.state_dict()))

    def rebuilt(state: dict[str, torch.Tensor]) -> DecoderTransformer:
        copy = DecoderTransformer(vocab_size=13, width=16, layers=2, heads=2, context_length=model.context_length,
                                  block_style=block_style)
        copy.load_state_dict(state, strict=True)
        return copy.eval()

    runners = {}
    for fmt in (mv.ARTIFACT_FORMAT_STATE_DICT, mv.ARTIFACT_FORMAT_SAFETENSORS, mv.ARTIFACT_FORMAT_TORCHSCRIPT,
                mv.ARTIFACT_FORMAT_ONNX):
        started = await registry.stub.ExportModelVersion(rr.ExportModelVersionRequest(name=v.name, format=fmt))
        export = await finished(registry, started.name)
        assert export.state == me.MODEL_EXPORT_STATE_SUCCEEDED, (fmt, export.error.message)
        blob = await download(registry, v.name, fmt)
        assert hashlib.sha256(blob).hexdigest() == export.sha256
        if fmt == mv.ARTIFACT_FORMAT_STATE_DICT:
            runners["state-dict"] = rebuilt(torch.load(io.BytesIO(blob), weights_only=True))
        elif fmt == mv.ARTIFACT_FORMAT_SAFETENSORS:
            runners["safetensors"] = rebuilt(load(blob))
        elif fmt == mv.ARTIFACT_FORMAT_TORCHSCRIPT:
            runners["torchscript"] = torch.jit.load(io.BytesIO(blob))
        else:
            assert export.content_type == "application/x-onnx"
            session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
            assert [i.name for i in session.get_inputs()] == ["tokens"]
            assert [o.name for o in session.get_outputs()] == ["logits"]
            runners["onnx"] = lambda tokens, s=session: torch.from_numpy(s.run(None, {"tokens": tokens.numpy()})[0])
    gen = torch.Generator().manual_seed(11)
    for shape in [(1, 6), (4, 6), (2, 3), (5, 1)]:
        tokens = torch.randint(0, 13, shape, generator=gen)
        with torch.no_grad():
            want = model(tokens)
            for fmt, run in runners.items():
                got = run(tokens)
                assert got.shape == want.shape, (fmt, shape)
                assert np.allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-3), (fmt, shape)
                if fmt in ("state-dict", "safetensors"):
                    assert torch.equal(got, want), fmt


async def test_an_export_that_does_not_reproduce_the_model_fails(registry: Registry, monkeypatch) -> None:
    """The verification can fail: an ONNX file whose logits differ is never stored."""
    from services.model import exports

    torch.manual_seed(4)
    model = DecoderTransformer(vocab_size=13, width=16, layers=2, heads=2, context_length=6).eval()
    await make_model(registry.stub, "tampered")
    v = await make_version(registry.stub, "tampered", parameters=DECODER_PARAMETERS)
    await upload_all(registry.stub, v.name, state_dict_bytes(model.state_dict()))
    real_rebuild = exports.rebuild

    def skewed(state, params, fmt="TORCHSCRIPT"):  # the exporter sees other weights than the check
        module, context = real_rebuild(state, params, fmt)
        if not getattr(skewed, "done", False):
            skewed.done = True  # type: ignore[attr-defined]
            with torch.no_grad():
                module.head.weight.mul_(1.5)  # (a constant shift would vanish after LayerNorm)
        return module, context

    monkeypatch.setattr(exports, "rebuild", skewed)
    started = await registry.stub.ExportModelVersion(rr.ExportModelVersionRequest(
        name=v.name, format=mv.ARTIFACT_FORMAT_ONNX))
    export = await finished(registry, started.name)
    assert export.state == me.MODEL_EXPORT_STATE_FAILED
    assert "ONNX verification failed" in export.error.message, export.error.message


def write_checkpoint(path: Path) -> tuple[DecoderTransformer, str]:
    """A training checkpoint as the trainer writes it (model state_dict plus training state)."""
    torch.manual_seed(1)
    model = DecoderTransformer(vocab_size=11, width=16, layers=1, heads=2, context_length=4)
    torch.save({"format": 1, "step": 30, "model": model.state_dict(), "optimizer": {"state": {}},
                "rng": {"torch": torch.get_rng_state()}, "metrics": {"val_accuracy": 0.5}}, path)
    return model, sha256_file(path)


def completed_event(path: Path, sha: str) -> event_pb2.Event:
    job = tj.TrainingJob(
        name="trainingJobs/job-1", labels={"model": "grok"}, phase="phases/cognate", phase_run="phaseRuns/run-1",
        final_metrics={"val_accuracy": 0.97, "train_loss": 0.01},
        spec=tj.TrainingJobSpec(model=tj.ModelArchitecture(layers=1, width=16, heads=2, context_length=4),
                                batch_size=8, max_steps=30))
    ckpt = tj.Checkpoint(name="trainingJobs/job-1/checkpoints/final", step=30, sha256=sha, final=True,
                         uri=path.as_uri())
    return event_pb2.Event(id="e" * 32, type=event_pb2.TrainingJobCompleted.DESCRIPTOR.full_name, source="training",
                           subject=job.name, training_job_completed=event_pb2.TrainingJobCompleted(
                               training_job=job, checkpoint=ckpt))


async def test_training_handoff_registers_exactly_one_version_on_redelivery(
        registry: Registry, tmp_path: Path) -> None:
    model, sha = write_checkpoint(tmp_path / "ckpt-00000030.pt")
    event = completed_event(tmp_path / "ckpt-00000030.pt", sha)
    await registry.bus.publish(registry.training_stream, event, subject="trainingJobs/job-1")
    await registry.bus.publish(registry.training_stream, event, subject="trainingJobs/job-1")  # redelivered
    stub = registry.stub
    async with asyncio.timeout(20):
        while True:
            try:
                version = await stub.GetModelVersion(rr.GetModelVersionRequest(name="models/grok/versions/latest"))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                await asyncio.sleep(0.05)
    async with asyncio.timeout(20):  # both entries handled (acked) by the group
        while (await registry.bus.client.xpending(registry.training_stream, "model-registry"))["pending"] or \
                len(await registry.bus.client.xrange(registry.training_stream)) < 2:
            await asyncio.sleep(0.05)
        info = await registry.bus.client.xinfo_groups(registry.training_stream)
        while info[0]["entries-read"] < 2:
            await asyncio.sleep(0.05)
            info = await registry.bus.client.xinfo_groups(registry.training_stream)
    listed = await stub.ListModelVersions(rr.ListModelVersionsRequest(parent="models/grok"))
    assert [v.name for v in listed.model_versions] == ["models/grok/versions/1"]
    assert version.state == mv.MODEL_VERSION_STATE_READY
    lin = version.lineage
    assert (lin.training_job, lin.checkpoint, lin.phase_run, lin.phase) == (
        "trainingJobs/job-1", "trainingJobs/job-1/checkpoints/final", "phaseRuns/run-1", "phases/cognate")
    assert dict(version.metrics) == {"val_accuracy": 0.97, "train_loss": 0.01}
    weights = torch.load(io.BytesIO(await download(registry, version.name)), weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())

    ts = await stub.ExportModelVersion(rr.ExportModelVersionRequest(name=version.name,
                                                                    format=mv.ARTIFACT_FORMAT_TORCHSCRIPT))
    export = await finished(registry, ts.name)
    assert export.state == me.MODEL_EXPORT_STATE_SUCCEEDED, export.error.message
    scripted = torch.jit.load(io.BytesIO(await download(registry, version.name, mv.ARTIFACT_FORMAT_TORCHSCRIPT)))
    tokens = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    assert torch.allclose(scripted(tokens), model(tokens), atol=1e-6)

    async with asyncio.timeout(10):
        async for item in registry.bus.follow(registry.events_stream):
            assert isinstance(item, Envelope)
            created = item.unpack(event_pb2.Event).model_version_created.model_version
            if created.name == "models/grok/versions/1":
                assert created.lineage.checkpoint == "trainingJobs/job-1/checkpoints/final"
                break


async def test_a_char_model_is_registered_with_its_tokenizer_vocabulary(registry: Registry, tmp_path: Path) -> None:
    """TOKENIZER_CHAR end to end on the registry side: the version records the tokenizer
    and the vocabulary its ids mean (read from the checkpoint), so consumers can feed it."""
    path = tmp_path / "ckpt-char.pt"
    torch.manual_seed(2)
    vocabulary = " abcdeht"
    model = DecoderTransformer(vocab_size=len(vocabulary) + 3, width=16, layers=1, heads=2, context_length=4)
    torch.save({"format": 1, "step": 30, "model": model.state_dict(),
                "tokenizer": {"kind": "char", "vocabulary": vocabulary}}, path)
    event = completed_event(path, sha256_file(path))
    completed = event.training_job_completed
    completed.training_job.name = "trainingJobs/char-1"
    completed.training_job.labels["model"] = "chars"
    completed.training_job.spec.task.kind = tj.TASK_KIND_COGNATE
    completed.training_job.spec.task.dataset.tokenizer = tj.TOKENIZER_CHAR
    completed.checkpoint.name = "trainingJobs/char-1/checkpoints/final"
    await registry.bus.publish(registry.training_stream, event, subject="trainingJobs/char-1")
    async with asyncio.timeout(20):
        while True:
            try:
                version = await registry.stub.GetModelVersion(rr.GetModelVersionRequest(name="models/chars/versions/1"))
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                await asyncio.sleep(0.05)
    assert version.parameters["task.tokenizer"] == "char"
    assert version.parameters["task.tokenizer.vocabulary"] == vocabulary
    assert version.parameters["task.kind"] == "cognate"
