"""Weights in and out of the model registry, and held-out evaluation, for the forge phases.

- :func:`download_weights`: ``DownloadModelArtifact`` to a file, sha256 checked, then the
  ``state_dict`` (``torch.load(weights_only=True)``).
- :func:`register_weights`: ``CreateModelVersion`` (idempotent by request id) then
  ``UploadModelArtifact`` (header + 1 MiB chunks); returns the READY version. A retried
  call finds the version its first attempt made and finishes or skips the upload.
- :func:`build_decoder` / :func:`heldout_task` / :func:`validation_loss`: rebuild a
  registered decoder from its parameters and weights, and score it on text none of the
  Cognate models trained on (the built-in word problems drawn with :data:`HELDOUT_SEED`,
  or a given file's validation split).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import torch

from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as mreq
from services.forge.phases.base import StepFailedError
from services.training.engine.model import DecoderTransformer
from services.training.engine.spec import BUILTIN_DATASET
from services.training.engine.tasks import CharTokenizer, CognateTask

__all__ = ["HELDOUT_SEED", "build_decoder", "download_weights", "heldout_task", "load_state", "register_weights",
           "state_dict_bytes", "tokenizer_of", "validation_loss"]

#: Seed of the held-out word problems (Cognate candidates use small seeds; the generator's
#: problems for this seed are a sample none of them trained on).
HELDOUT_SEED = 2_147_483_647
CHUNK = 1 << 20
ARCH_KEYS = ("model.layers", "model.width", "model.heads", "model.context_length", "task.kind", "task.tokenizer",
             "task.tokenizer.vocabulary")


async def download_weights(model_stub: Any, name: str, dest: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """``(resolved version name, state_dict)`` of ``name`` (a version id or an alias)."""
    digest = hashlib.sha256()
    resolved, expected, size = "", "", 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f:
        async for chunk in model_stub.DownloadModelArtifact(mreq.DownloadModelArtifactRequest(name=name),
                                                            timeout=120):
            if chunk.HasField("stream_end"):
                continue
            resolved = chunk.model_version or resolved
            expected = chunk.sha256 or expected
            size += len(chunk.data)
            digest.update(chunk.data)
            f.write(chunk.data)
    if expected and digest.hexdigest() != expected:
        raise StepFailedError(15, f"{name}: downloaded {size} bytes whose sha256 does not match the registry's")
    return resolved, load_state(dest)


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in a ``.pth`` file (or a training checkpoint's ``"model"``)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    return dict(obj)


def state_dict_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


async def _chunks(name: str, data: bytes, offset: int) -> AsyncIterator[mreq.UploadModelArtifactRequest]:
    yield mreq.UploadModelArtifactRequest(header=mreq.UploadHeader(
        name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        content_type="application/x-pytorch", format=mv.ARTIFACT_FORMAT_STATE_DICT))
    for start in range(offset, len(data), CHUNK):
        yield mreq.UploadModelArtifactRequest(chunk=mreq.UploadChunk(offset=start, data=data[start:start + CHUNK]))


async def register_weights(model_stub: Any, parent: str, version: mv.ModelVersion, data: bytes,
                           request_id: str) -> mv.ModelVersion:
    """Create the version (idempotent per ``request_id``) and upload ``data`` to it."""
    try:
        await model_stub.GetModel(mreq.GetModelRequest(name=parent), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        from agentforge.model.v1 import model_pb2

        try:
            await model_stub.CreateModel(mreq.CreateModelRequest(
                model_id=parent.split("/", 1)[1], model=model_pb2.Model(display_name=parent.split("/", 1)[1])),
                timeout=10)
        except grpc.aio.AioRpcError as again:
            if again.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    created = await model_stub.CreateModelVersion(
        mreq.CreateModelVersionRequest(parent=parent, model_version=version, request_id=request_id), timeout=30)
    if created.state != mv.MODEL_VERSION_STATE_READY:
        offset = created.artifact.committed_bytes if created.artifact.sha256 == hashlib.sha256(data).hexdigest() else 0
        await model_stub.UploadModelArtifact(_chunks(created.name, data, offset), timeout=120)
        created = await model_stub.GetModelVersion(mreq.GetModelVersionRequest(name=created.name), timeout=10)
    if created.state != mv.MODEL_VERSION_STATE_READY:
        raise StepFailedError(10, f"{created.name} is {mv.ModelVersionState.Name(created.state)} after its upload")
    return created


def architecture(version: mv.ModelVersion) -> dict[str, str]:
    """The architecture parameters a merge needs to match (the tokenizer too: ids mean
    nothing without it; a version that names none is a byte model)."""
    arch = {k: version.parameters.get(k, "") for k in ARCH_KEYS}
    if arch["task.kind"] == "cognate" and not arch["task.tokenizer"]:
        arch["task.tokenizer"] = "byte"
    return arch


def tokenizer_of(params: Mapping[str, str]) -> "str | CharTokenizer":
    """How text becomes ids for a registered version: ``"byte"``, or the
    :class:`CharTokenizer` of its ``task.tokenizer.vocabulary`` (TOKENIZER_CHAR)."""
    if params.get("task.tokenizer", "byte") != "char":
        return "byte"
    vocabulary = params.get("task.tokenizer.vocabulary", "")
    if not vocabulary:
        raise StepFailedError(9, "a TOKENIZER_CHAR model without its vocabulary "
                                 "(parameter task.tokenizer.vocabulary) cannot be fed text")
    try:
        return CharTokenizer(vocabulary)
    except ValueError as exc:  # (SpecError too) a vocabulary no training run wrote
        raise StepFailedError(9, f"parameter task.tokenizer.vocabulary is not a character vocabulary: {exc}") from exc


def build_decoder(state: Mapping[str, torch.Tensor], params: Mapping[str, str]) -> DecoderTransformer:
    """A decoder shaped like ``params`` (a version's parameters) holding ``state``."""
    positions = state["position_embeddings.weight"].shape[0]
    paper = any(k.endswith("attn.in_proj_weight") for k in state)
    model = DecoderTransformer(
        vocab_size=int(state["token_embeddings.weight"].shape[0]), width=int(params["model.width"]),
        layers=int(params["model.layers"]), heads=int(params["model.heads"]), context_length=int(positions),
        dropout=0.0, block_style="grokfast_paper" if paper else "pre_ln")
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


def heldout_task(context_length: int, dataset_path: str = "", seed: int = HELDOUT_SEED,
                 tokenizer: "str | CharTokenizer" = "byte") -> CognateTask:
    """Text to score and fine-tune on: the built-in word problems drawn with ``seed``, or the
    given file split by ``seed``. ``train_inputs`` for fine-tuning, ``eval_inputs`` to score.
    ``tokenizer``: the model's (:func:`tokenizer_of`); a char model's vocabulary is used
    as it is, characters outside it left out of the text."""
    return CognateTask(dataset_path or BUILTIN_DATASET, context_length, train_fraction=0.9, seed=seed,
                       tokenizer=tokenizer)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, task: CognateTask) -> float:
    """Mean next-token cross-entropy (nats per token) on the task's held-out windows."""
    return float(task.evaluate(model)["loss"])
