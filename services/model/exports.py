"""Weight format conversions with torch, offline. Pure functions; they block.

Supported targets:

* ``STATE_DICT`` — the weights as a ``torch.save``d ``state_dict`` (``.pth``).
* ``SAFETENSORS`` — the same tensors in Hugging Face safetensors (``safetensors`` package).
* ``TORCHSCRIPT`` — only when the version's ``parameters`` describe an architecture this
  build can rebuild (``architecture=decoder_transformer`` plus ``model.layers``,
  ``model.width``, ``model.heads``, ``model.context_length``, as the training hand-off
  records them): the module is rebuilt, loaded strictly and traced with a full-context
  input, so the TorchScript module takes ``(batch, context_length)`` token ids.
* ``ONNX`` — the same rebuilt module exported with ``torch.onnx.export(dynamo=True)``
  (the ``torch.export`` based exporter; needs the ``onnx`` and ``onnxscript`` packages),
  opset 18: one input ``tokens`` int64 ``(batch, sequence)`` with both dimensions dynamic
  (``sequence`` 1..``context_length``), one output ``logits`` float32
  ``(batch, sequence, vocab)``.

Every conversion is verified before it is stored (:func:`verify`), so an export that
SUCCEEDED holds what the artifact holds: STATE_DICT and SAFETENSORS are read back and
compared tensor by tensor (exactly); TORCHSCRIPT is loaded with ``torch.jit.load`` and
ONNX run in ``onnxruntime`` (CPU) on sample token batches, and their logits must match
the PyTorch module's within ``atol`` :data:`ATOL` + ``rtol`` :data:`RTOL` (float32
kernels differ in summation order; see ``numpy.allclose``). A mismatch fails the export.

Sources: an artifact that is a ``state_dict`` (or a training checkpoint holding one under
``"model"``) saved with ``torch.save``, or a safetensors file.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import threading
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
    "verify",
]

CONTENT_TYPES = {
    "STATE_DICT": "application/x-pytorch",
    "SAFETENSORS": "application/x-safetensors",
    "TORCHSCRIPT": "application/x-torchscript",
    "ONNX": "application/x-onnx",
}

ARCHITECTURE = "decoder_transformer"
#: Tolerances of the exported module's logits against the PyTorch module's (float32).
ATOL = 1e-4
RTOL = 1e-3
#: The ONNX opset of exports (the dynamo exporter's default for torch 2.x).
ONNX_OPSET = 18
#: ``torch.export`` traces under process-wide state (fake tensor mode, dynamo config):
#: one ONNX export at a time per process (exports run in worker threads).
_EXPORT_LOCK = threading.Lock()


class ConversionError(Exception):
    """The conversion cannot be done for this artifact (the export becomes FAILED)."""


def unsupported_reason(fmt: str) -> str | None:
    """Why ``fmt`` cannot be exported in this deployment at all, or None."""
    if fmt == "ONNX":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            return (f"ONNX export is not supported in this deployment ({', '.join(missing)} not installed; "
                    "torch.onnx needs onnx and onnxscript, verification onnxruntime)")
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


def _int_param(params: Mapping[str, str], key: str, fmt: str = "TORCHSCRIPT") -> int:
    try:
        return int(params[key])
    except KeyError:
        raise ConversionError(
            f"{fmt} needs the architecture: parameter {key!r} is missing (the version was not "
            "registered by the training hand-off and does not describe its architecture)") from None
    except ValueError:
        raise ConversionError(f"parameter {key!r} is not an integer: {params[key]!r}") from None


def rebuild(state: Mapping[str, Any], params: Mapping[str, str], fmt: str = "TORCHSCRIPT") -> tuple[Any, int]:
    """``(module in eval mode, context_length)``: the decoder the parameters describe,
    holding ``state`` (loaded strictly). ConversionError when they do not describe one."""
    arch = params.get("architecture", "")
    if arch != ARCHITECTURE:
        raise ConversionError(
            f"{fmt} needs an architecture this registry can rebuild; parameter 'architecture' is "
            f"{arch!r}, supported: {ARCHITECTURE!r}")
    layers, width, heads, context = (_int_param(params, f"model.{k}", fmt)
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
    try:
        model = DecoderTransformer(vocab_size=int(embedding.shape[0]), width=width, layers=layers, heads=heads,
                                   context_length=max(rows, context), dropout=0.0,
                                   block_style="grokfast_paper" if paper else "pre_ln")
        model.load_state_dict(dict(state), strict=True)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ConversionError(f"weights do not fit the declared architecture: {exc}") from exc
    return model.eval(), context


def sample_tokens(vocab: int, context: int) -> list[Any]:
    """Token batches a conversion is checked on: full context, a short prefix, one token;
    batch sizes 1 to 3; ids drawn from a fixed-seed generator (deterministic)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shapes = [(2, context), (3, max(1, context // 2)), (1, 1)]
    return [torch.randint(0, vocab, shape, generator=gen) for shape in shapes]


def _check_logits(fmt: str, got: Any, want: Any, shape: tuple[int, ...]) -> None:
    import numpy as np

    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise ConversionError(f"{fmt} verification failed: logits of shape {got.shape} for tokens {shape}, "
                              f"the PyTorch module gives {want.shape}")
    if not np.allclose(got, want, atol=ATOL, rtol=RTOL):
        worst = float(np.max(np.abs(got - want)))
        raise ConversionError(f"{fmt} verification failed: logits differ from the PyTorch module's by up to "
                              f"{worst:.3g} for tokens {shape} (atol {ATOL}, rtol {RTOL})")


def _torchscript(state: Mapping[str, Any], params: Mapping[str, str], out: BinaryIO) -> None:
    import torch

    model, context = rebuild(state, params, "TORCHSCRIPT")
    example = torch.zeros(1, context, dtype=torch.long)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation notices; verified below
        traced = torch.jit.trace(model, (example,))
        torch.jit.save(traced, buf)
    verify("TORCHSCRIPT", buf.getvalue(), state, params)
    out.write(buf.getvalue())


def _onnx(state: Mapping[str, Any], params: Mapping[str, str], out: BinaryIO) -> None:
    import torch

    model, context = rebuild(state, params, "ONNX")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    sequence = torch.export.Dim("sequence", min=1, max=context)
    example = torch.zeros(2, context, dtype=torch.long)
    # The exporter logs (warnings) that optional torchvision ops are absent; not ours.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    with _EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                        input_names=["tokens"], output_names=["logits"],
                                        dynamic_shapes=({0: batch, 1: sequence},), verbose=False)
        except Exception as exc:  # noqa: BLE001 - any exporter failure fails this export
            raise ConversionError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
        finally:
            quiet.setLevel(level)
    data = program.model_proto.SerializeToString()
    verify("ONNX", data, state, params)
    out.write(data)


def verify(fmt: str, data: bytes, state: Mapping[str, Any], params: Mapping[str, str]) -> None:
    """Check that ``data`` (an export in ``fmt``) holds ``state``; ConversionError if not.

    STATE_DICT / SAFETENSORS: read back (``torch.load(weights_only=True)`` /
    ``safetensors.torch.load``) and every tensor equal. TORCHSCRIPT / ONNX: loaded
    (``torch.jit.load`` / ``onnxruntime.InferenceSession``) and run on
    :func:`sample_tokens`; the logits must match the rebuilt PyTorch module's within
    :data:`ATOL` / :data:`RTOL`.
    """
    import torch

    if fmt in ("STATE_DICT", "SAFETENSORS"):
        try:
            if fmt == "STATE_DICT":
                loaded = extract_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
            else:
                from safetensors.torch import load

                loaded = load(data)
        except ConversionError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(f"{fmt} verification failed: cannot read the export back: {exc}") from exc
        if loaded.keys() != state.keys() or not all(torch.equal(loaded[k], state[k]) for k in state):
            raise ConversionError(f"{fmt} verification failed: the tensors read back differ from the artifact's")
        return
    model, context = rebuild(state, params, fmt)
    vocab = int(state["token_embeddings.weight"].shape[0])
    if fmt == "TORCHSCRIPT":
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

        def run(tokens: Any) -> Any:
            with torch.no_grad():
                return module(tokens).numpy()
    elif fmt == "ONNX":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

        def run(tokens: Any) -> Any:
            return session.run(["logits"], {"tokens": tokens.numpy()})[0]
    else:
        raise ConversionError(f"unknown format {fmt}")
    for tokens in sample_tokens(vocab, context):
        with torch.no_grad():
            want = model(tokens).numpy()
        try:
            got = run(tokens)
        except Exception as exc:  # noqa: BLE001
            raise ConversionError(f"{fmt} verification failed: the export does not run on tokens "
                                  f"{tuple(tokens.shape)}: {exc}") from exc
        _check_logits(fmt, got, want, tuple(tokens.shape))


def convert(src: Path, src_format: str, target: str, params: Mapping[str, str], out: BinaryIO) -> str:
    """Convert the artifact at ``src`` to ``target``, writing to ``out``; returns the MIME type."""
    reason = unsupported_reason(target)
    if reason:
        raise ConversionError(reason)
    state = load_state_dict(src, src_format)
    if target in ("STATE_DICT", "SAFETENSORS"):
        if target == "STATE_DICT":
            buf = io.BytesIO()
            save_state_dict(state, buf)
            data = buf.getvalue()
        else:
            from safetensors.torch import save

            data = save({k: v.detach().clone().contiguous() for k, v in state.items()})
        verify(target, data, state, params)
        out.write(data)
    elif target == "TORCHSCRIPT":
        _torchscript(state, params, out)
    elif target == "ONNX":
        _onnx(state, params, out)
    else:
        raise ConversionError(f"unknown target format {target}")
    return CONTENT_TYPES[target]
