"""Weight format conversions with torch, offline. Pure functions; they block.

Supported targets:

* ``STATE_DICT`` — the weights as a ``torch.save``d ``state_dict`` (``.pth``).
* ``SAFETENSORS`` — the same tensors in Hugging Face safetensors (``safetensors`` package).
* ``TORCHSCRIPT`` — only when the version's ``parameters`` describe an architecture this
  build can rebuild (``architecture=decoder_transformer`` plus ``model.layers``,
  ``model.width``, ``model.heads``, ``model.context_length``, as the training hand-off
  records them): the module is rebuilt, loaded strictly and traced with a full-context
  input, so the TorchScript module takes ``(batch, context_length)`` token ids.
* ``ONNX`` — not offered: ``torch.onnx`` needs the ``onnx`` package, which this
  deployment does not ship (:func:`unsupported_reason`).

Sources: an artifact that is a ``state_dict`` (or a training checkpoint holding one under
``"model"``) saved with ``torch.save``, or a safetensors file.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "ConversionError",
    "CONTENT_TYPES",
    "convert",
    "extract_state_dict",
    "load_state_dict",
    "save_state_dict",
    "unsupported_reason",
]

CONTENT_TYPES = {
    "STATE_DICT": "application/x-pytorch",
    "SAFETENSORS": "application/x-safetensors",
    "TORCHSCRIPT": "application/x-torchscript",
    "ONNX": "application/x-onnx",
}

ARCHITECTURE = "decoder_transformer"


class ConversionError(Exception):
    """The conversion cannot be done for this artifact (the export becomes FAILED)."""


def unsupported_reason(fmt: str) -> str | None:
    """Why ``fmt`` cannot be exported in this deployment at all, or None."""
    if fmt == "ONNX" and importlib.util.find_spec("onnx") is None:
        return "ONNX export is not supported in this deployment (torch.onnx needs the onnx package)"
    if fmt == "ONNX":
        return "ONNX export is not supported in this deployment"
    if fmt == "SAFETENSORS" and importlib.util.find_spec("safetensors") is None:
        return "SAFETENSORS export is not supported in this deployment (safetensors is not installed)"
    return None


def extract_state_dict(obj: Any) -> dict[str, Any]:
    """The tensors of a ``state_dict``, or of a training checkpoint's ``"model"`` entry."""
    import torch

    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return extract_state_dict(obj["model"])
    raise ConversionError("the artifact is not a torch state_dict (nor a checkpoint with a 'model' state_dict)")


def load_state_dict(path: Path, fmt: str) -> dict[str, Any]:
    """Read the weights of an artifact in format ``fmt``."""
    import torch

    if fmt == "SAFETENSORS":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a conversion error
            raise ConversionError(f"cannot read the artifact as safetensors: {exc}") from exc
    if fmt == "STATE_DICT":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(f"cannot read the artifact with torch.load(weights_only=True): {exc}") from exc
        return extract_state_dict(obj)
    raise ConversionError(f"cannot convert from a {fmt} artifact")


def save_state_dict(state: Mapping[str, Any], out: BinaryIO) -> None:
    import torch

    torch.save(dict(state), out)


def _int_param(params: Mapping[str, str], key: str) -> int:
    try:
        return int(params[key])
    except KeyError:
        raise ConversionError(
            f"TORCHSCRIPT needs the architecture: parameter {key!r} is missing (the version was not "
            "registered by the training hand-off and does not describe its architecture)") from None
    except ValueError:
        raise ConversionError(f"parameter {key!r} is not an integer: {params[key]!r}") from None


def _torchscript(state: Mapping[str, Any], params: Mapping[str, str], out: BinaryIO) -> None:
    import torch

    arch = params.get("architecture", "")
    if arch != ARCHITECTURE:
        raise ConversionError(
            f"TORCHSCRIPT needs an architecture this registry can rebuild; parameter 'architecture' is "
            f"{arch!r}, supported: {ARCHITECTURE!r}")
    layers, width, heads, context = (_int_param(params, f"model.{k}")
                                     for k in ("layers", "width", "heads", "context_length"))
    embedding = state.get("token_embeddings.weight")
    if embedding is None:
        raise ConversionError("state_dict has no token_embeddings.weight; not a decoder_transformer")
    try:
        from services.training.engine.model import DecoderTransformer
    except ImportError as exc:
        raise ConversionError(f"the decoder_transformer definition is not available: {exc}") from exc
    # The weights say which block they belong to (packed q/k/v: the GrokFast paper's) and
    # how many position rows were built (the paper's model has one more than it reads).
    paper = any(k.endswith("attn.in_proj_weight") for k in state)
    positions = state.get("position_embeddings.weight")
    rows = int(positions.shape[0]) if positions is not None else context
    model = DecoderTransformer(vocab_size=int(embedding.shape[0]), width=width, layers=layers, heads=heads,
                               context_length=max(rows, context), dropout=0.0,
                               block_style="grokfast_paper" if paper else "pre_ln")
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ConversionError(f"weights do not fit the declared architecture: {exc}") from exc
    model.eval()
    example = torch.zeros(1, context, dtype=torch.long)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation notices; the trace is checked by torch
        traced = torch.jit.trace(model, (example,))
        torch.jit.save(traced, out)


def convert(src: Path, src_format: str, target: str, params: Mapping[str, str], out: BinaryIO) -> str:
    """Convert the artifact at ``src`` to ``target``, writing to ``out``; returns the MIME type."""
    reason = unsupported_reason(target)
    if reason:
        raise ConversionError(reason)
    state = load_state_dict(src, src_format)
    if target == "STATE_DICT":
        save_state_dict(state, out)
    elif target == "SAFETENSORS":
        from safetensors.torch import save

        out.write(save({k: v.detach().clone().contiguous() for k, v in state.items()}))
    elif target == "TORCHSCRIPT":
        _torchscript(state, params, out)
    else:
        raise ConversionError(f"unknown target format {target}")
    return CONTENT_TYPES[target]
