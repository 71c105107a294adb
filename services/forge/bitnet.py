"""BitNet b1.58: ternary (absmean) weights, 8-bit (absmax) activations, straight-through QAT.

Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
section 2 (BitNet b1.58) on top of Wang et al. 2023 (BitNet, BitLinear):

- weights: ``W̃ = RoundClip(W / (γ + ε), -1, 1)`` with ``γ = mean(|W|)`` (absmean, per
  tensor); the layer computes with ``γ · W̃``;
- activations: per token, ``x̃ = Clip(round(x · Q_b / γ_x), -Q_b, Q_b - 1)`` with
  ``Q_b = 2^(b-1)`` and ``γ_x = max |x|`` (absmax, b = 8), rescaled by ``γ_x / Q_b``;
- training through the rounding with the straight-through estimator (Bengio et al. 2013):
  the forward pass uses the quantized value, the backward pass the identity,
  ``w + (q(w) - w).detach()``.

As in BitNet, every ``nn.Linear`` inside the transformer blocks becomes a
:class:`BitLinear`; embeddings, LayerNorms and the output head stay in full precision.

Storage: ternary weights are packed five to a byte (base 3, ``3^5 = 243 <= 256``), 1.6 bits
per weight, plus one float32 ``γ`` per tensor (:func:`pack_ternary`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BitLinear",
    "absmean_ternary",
    "bitnet_state_dict",
    "convert_to_bitnet",
    "dequantize_state_dict",
    "mark_quantized",
    "pack_ternary",
    "quantized_modules",
    "unpack_ternary",
]

EPS = 1e-5
PACKED_SUFFIX = ".ternary_packed"
SCALE_SUFFIX = ".ternary_scale"
SHAPE_SUFFIX = ".ternary_shape"


def absmean_ternary(w: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W̃ in {-1, 0, 1}, γ)`` with ``γ = mean|W|`` — so ``γ · W̃`` approximates ``W``."""
    gamma = w.abs().mean()
    return torch.clamp(torch.round(w / (gamma + eps)), -1, 1), gamma


def _absmax_int8(x: torch.Tensor, bits: int) -> torch.Tensor:
    q = 2 ** (bits - 1)
    gamma = x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return torch.clamp(torch.round(x * q / gamma), -q, q - 1) * gamma / q


class BitLinear(nn.Linear):
    """``nn.Linear`` with BitNet b1.58 quantization of weights (and activations) in forward;
    gradients flow to the full-precision weights by the straight-through estimator."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation_bits: int = 8) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.activation_bits = activation_bits
        #: True once ``weight`` already holds ``γ · W̃`` (loaded from the packed form):
        #: re-quantizing it would change the scale to ``γ · mean|W̃|``.
        self.weight_is_quantized = False

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_is_quantized:
            return self.weight
        ternary, gamma = absmean_ternary(self.weight)
        return ternary * gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight + (self.quantized_weight() - self.weight).detach()
        if self.activation_bits:
            x = x + (_absmax_int8(x, self.activation_bits) - x).detach()
        return F.linear(x, w, self.bias)


def convert_to_bitnet(model: nn.Module, activation_bits: int = 8) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``model.layers`` by a :class:`BitLinear` with the
    same weights (in place; returns ``model``)."""
    for block in model.layers:  # type: ignore[attr-defined]
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    bit = BitLinear(child.in_features, child.out_features, child.bias is not None, activation_bits)
                    bit.load_state_dict(child.state_dict())
                    setattr(module, child_name, bit)
    return model


def quantized_modules(model: nn.Module) -> dict[str, BitLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


def mark_quantized(model: nn.Module) -> nn.Module:
    """Declare that every BitLinear's weight already is ``γ · W̃`` (see :func:`dequantize_state_dict`)."""
    for m in quantized_modules(model).values():
        m.weight_is_quantized = True
    return model


def pack_ternary(t: torch.Tensor) -> torch.Tensor:
    """Pack values in {-1, 0, 1} five per byte (base 3); ``ceil(n / 5)`` uint8s."""
    flat = (t.flatten().to(torch.int64) + 1)
    if flat.numel() and (flat.min() < 0 or flat.max() > 2):
        raise ValueError("not ternary")
    pad = (-flat.numel()) % 5
    flat = torch.cat([flat, torch.ones(pad, dtype=torch.int64)]).view(-1, 5)
    powers = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int64)
    return (flat * powers).sum(dim=1).to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    v = packed.to(torch.int64)
    digits = torch.stack([(v // p) % 3 for p in (1, 3, 9, 27, 81)], dim=1).flatten()[:n]
    return (digits - 1).to(torch.float32).view(shape)


def bitnet_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The storage form of a converted model: BitLinear weights packed (1.6 bits each) with
    their scale, everything else as is. Returns ``(state, stats)`` where stats has
    ``quantized_weights``, ``bits_per_weight`` (storage bits per quantized weight, scales
    included) and ``full_precision_parameters``."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    quantized = 0
    packed_bits = 0
    for name, module in quantized_modules(model).items():
        key = f"{name}.weight"
        ternary, gamma = absmean_ternary(module.weight.detach())
        del state[key]
        packed = pack_ternary(ternary)
        state[key + PACKED_SUFFIX] = packed
        state[key + SCALE_SUFFIX] = gamma.reshape(1).float()
        state[key + SHAPE_SUFFIX] = torch.tensor(list(ternary.shape), dtype=torch.int64)
        quantized += ternary.numel()
        packed_bits += packed.numel() * 8 + 32
    full = sum(v.numel() for k, v in state.items() if v.is_floating_point() and not k.endswith(SCALE_SUFFIX))
    return state, {"quantized_weights": float(quantized),
                   "bits_per_weight": packed_bits / max(quantized, 1),
                   "full_precision_parameters": float(full)}


def dequantize_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`bitnet_state_dict`: ``γ · W̃`` back in each packed weight's place.
    Load it into a :func:`convert_to_bitnet` model and call :func:`mark_quantized`."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(PACKED_SUFFIX):
            base = k[: -len(PACKED_SUFFIX)]
            shape = tuple(int(x) for x in state[base + SHAPE_SUFFIX].tolist())
            out[base] = unpack_ternary(v, shape) * state[base + SCALE_SUFFIX].item()
        elif not k.endswith((SCALE_SUFFIX, SHAPE_SUFFIX)):
            out[k] = v
    return out
