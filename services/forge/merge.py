"""Model merge operators: linear, SLERP, TIES and DARE, on tensors and on state dicts.

Written here rather than taken from mergekit: mergekit pulls transformers, accelerate and
a Hugging Face model layout our small decoders do not have, and the four operators are a
few lines each. Each follows its paper:

- **linear** (weight averaging, Wortsman et al. 2022 "model soups"):
  ``θ = Σ_i w_i θ_i``, with the weights normalised to sum to 1 unless ``normalize=False``.
- **SLERP** (spherical linear interpolation, Shoemake 1985, as model mergers apply it per
  tensor): with ``Ω`` the angle between the flattened tensors ``a`` and ``b``,
  ``slerp(a, b, t) = sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b``; nearly colinear tensors
  (``|cos Ω| > 0.9995``) fall back to linear interpolation, as the quaternion formula does.
  More than two models are folded left: ``slerp(slerp(θ_1, θ_2, t_1), θ_3, t_2)``.
- **TIES** (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
  Algorithm 1): task vectors ``τ_i = θ_i - θ_base``; *trim* each to its top ``density``
  fraction by magnitude; *elect* per entry the sign of the summed trimmed values
  (``γ = sgn(Σ_i τ̂_i)``, the sign with the larger total mass); *disjoint merge*: the mean
  of the trimmed values that agree with ``γ`` (zeros excluded); ``θ = θ_base + λ τ_m``.
- **DARE** (Yu et al. 2023, "Language Models are Super Mario", Drop And REscale): each
  task vector entry is dropped with probability ``p`` and the kept ones are rescaled by
  ``1 / (1 - p)``; the rescaled task vectors are then added with weights
  (``θ = θ_base + λ Σ_i w_i τ̃_i``, task arithmetic), or passed to TIES (``dare_ties``).

All functions are pure (inputs are not modified) and work on float tensors of any shape;
state-dict helpers apply them key by key and copy non-float entries from the first model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = [
    "MergeError",
    "dare",
    "dare_mask",
    "linear",
    "merge_state_dicts",
    "slerp",
    "ties",
    "trim_top_k",
]

StateDict = Mapping[str, torch.Tensor]


class MergeError(ValueError):
    """The models cannot be merged (different keys or shapes, bad weights)."""


def _check(tensors: Sequence[torch.Tensor]) -> None:
    if not tensors:
        raise MergeError("nothing to merge")
    shape = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != shape:
            raise MergeError(f"shapes differ: {tuple(shape)} vs {tuple(t.shape)}")


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], *, normalize: bool = True) -> torch.Tensor:
    """``Σ w_i t_i`` (weights normalised to sum 1 when ``normalize``)."""
    _check(tensors)
    if len(weights) != len(tensors):
        raise MergeError(f"{len(weights)} weights for {len(tensors)} tensors")
    total = float(sum(weights))
    if normalize:
        if total == 0:
            raise MergeError("weights sum to 0")
        weights = [w / total for w in weights]
    out = torch.zeros_like(tensors[0], dtype=torch.float32)
    for w, t in zip(weights, tensors):
        out += float(w) * t.float()
    return out.to(tensors[0].dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, eps: float = 1e-8,
          colinear_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), on the flattened tensors."""
    _check([a, b])
    va, vb = a.flatten().double(), b.flatten().double()
    na, nb = va.norm(), vb.norm()
    if na < eps or nb < eps:
        return ((1 - t) * va + t * vb).view_as(a).to(a.dtype)
    dot = torch.clamp((va / na) @ (vb / nb), -1.0, 1.0).item()
    if abs(dot) > colinear_threshold:
        out = (1 - t) * va + t * vb
    else:
        omega = math.acos(dot)
        s = math.sin(omega)
        out = math.sin((1 - t) * omega) / s * va + math.sin(t * omega) / s * vb
    return out.view_as(a).to(a.dtype)


def trim_top_k(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (TIES step 1)."""
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density must be in (0, 1], got {density}")
    if density == 1.0 or tau.numel() == 0:
        return tau.clone()
    k = max(1, int(math.ceil(density * tau.numel())))
    flat = tau.flatten()
    threshold = flat.abs().kthvalue(flat.numel() - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], *, density: float = 0.2,
         lamb: float = 1.0, task_vectors: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """TIES-Merging of ``tensors`` onto ``base`` (trim, elect sign, disjoint mean, scale ``lamb``).

    ``task_vectors`` replaces ``tensors - base`` when given (DARE's rescaled vectors).
    """
    _check([base, *tensors])
    taus = [t.float() - base.float() for t in tensors] if task_vectors is None else [t.float() for t in task_vectors]
    trimmed = torch.stack([trim_top_k(tau, density) for tau in taus])
    elected = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    count = agree.sum(dim=0).clamp(min=1)
    merged_tau = (trimmed * agree).sum(dim=0) / count
    return (base.float() + lamb * merged_tau).to(base.dtype)


def dare_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli keep-mask: each entry kept with probability ``1 - p``."""
    if not 0.0 <= p < 1.0:
        raise MergeError(f"drop rate must be in [0, 1), got {p}")
    return torch.rand(shape, generator=generator) >= p


def dare(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], *, p: float = 0.5,
         lamb: float = 1.0, generator: torch.Generator | None = None, ties_density: float | None = None) -> torch.Tensor:
    """DARE: drop each task-vector entry with probability ``p``, rescale the rest by ``1/(1-p)``,
    then add them with ``weights`` (or merge them with TIES when ``ties_density`` is set)."""
    _check([base, *tensors])
    rescaled = []
    for t in tensors:
        tau = t.float() - base.float()
        rescaled.append(tau * dare_mask(tau.shape, p, generator) / (1.0 - p))
    if ties_density is not None:
        return ties(base, tensors, density=ties_density, lamb=lamb, task_vectors=rescaled)
    merged = linear(rescaled, weights, normalize=False)
    return (base.float() + lamb * merged).to(base.dtype)


def merge_state_dicts(models: Sequence[StateDict], fn: Callable[[str, list[torch.Tensor]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply ``fn(key, [tensor of each model])`` to every floating-point entry; other entries
    (integer buffers) are copied from the first model. Keys and shapes must match."""
    if not models:
        raise MergeError("nothing to merge")
    keys = list(models[0].keys())
    for i, m in enumerate(models[1:], 2):
        if set(m.keys()) != set(keys):
            missing = sorted(set(keys) ^ set(m.keys()))[:5]
            raise MergeError(f"model {i} has different tensors than model 1 (e.g. {missing})")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        tensors = [m[k] for m in models]
        _check(tensors)
        out[k] = fn(k, tensors) if tensors[0].is_floating_point() else tensors[0].clone()
    return out
