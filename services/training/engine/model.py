"""Decoder-only causal transformer sized by :class:`ModelSpec`.

Token + learned position embeddings, blocks (causal multi-head self-attention, GELU MLP of
4x width), final LayerNorm and an untied, bias-free output head. Attention is written out
(matmul, mask, softmax) so it is deterministic on every backend.

Two block styles (``ModelSpec.block_style``):

- ``pre_ln`` (:class:`Block`): ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; q/k/v and
  output projections are ``nn.Linear`` with PyTorch's default initialisation.
- ``grokfast_paper`` (:class:`PaperBlock`): the block of the GrokFast reference code
  (Lee et al. 2024, built on the grokking re-implementations it credits). ``ln_1`` is applied
  to the residual stream itself, so the stream after attention is ``ln_1(x) + attn(ln_1(x))``;
  the MLP branch is pre-LN. Attention is ``nn.MultiheadAttention``'s parametrisation: one
  packed ``(3*width, width)`` q/k/v matrix with Xavier-uniform init and zero bias, an output
  projection with Linear's default weight init and zero bias. Modules are created in the
  reference's order (``ln_1``, ``ln_2``, attention [output projection, then q/k/v], MLP), so
  with the same seed the same random numbers land in the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ModelSpec

__all__ = ["CausalSelfAttention", "Block", "PackedCausalSelfAttention", "PaperBlock",
           "DecoderTransformer", "build_model"]


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, context_length: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_drop = nn.Dropout(dropout)
        self.resid_drop = nn.Dropout(dropout)
        mask = torch.ones(context_length, context_length, dtype=torch.bool).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(self.mask[:t, :t], float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, context_length: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, context_length, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PackedCausalSelfAttention(nn.Module):
    """Causal self-attention parametrised and initialised as ``nn.MultiheadAttention``.

    ``in_proj_weight`` stacks the q, k and v matrices (rows ``[0, w)``, ``[w, 2w)``,
    ``[2w, 3w)``). Init order: ``out_proj`` (Linear default, bias then zeroed), then
    ``in_proj_weight`` (Xavier-uniform over the packed matrix), ``in_proj_bias`` zero.
    Dropout (``dropout`` > 0) acts on the attention weights, as in ``nn.MultiheadAttention``.
    """

    def __init__(self, width: int, heads: int, context_length: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.attn_drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)
        mask = torch.ones(context_length, context_length, dtype=torch.bool).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(c, dim=2)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(self.mask[:t, :t], float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.out_proj(y)


class PaperBlock(nn.Module):
    """The GrokFast reference block: ``x = ln_1(x); x = x + attn(x); x = x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, context_length: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.attn = PackedCausalSelfAttention(width, heads, context_length, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x)
        x = x + self.attn(x)
        return x + self.mlp(self.ln_2(x))


_BLOCKS: dict[str, type[nn.Module]] = {"pre_ln": Block, "grokfast_paper": PaperBlock}


class DecoderTransformer(nn.Module):
    """``forward(tokens (B, T) int64) -> logits (B, T, vocab)``, T <= context_length."""

    def __init__(self, vocab_size: int, width: int = 128, layers: int = 2, heads: int = 4,
                 context_length: int = 4, dropout: float = 0.0, block_style: str = "pre_ln") -> None:
        super().__init__()
        if block_style not in _BLOCKS:
            raise ValueError(f"unknown block style {block_style!r}")
        self.block_style = block_style
        self.context_length = context_length
        self.token_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(context_length, width)
        self.drop = nn.Dropout(dropout)
        block = _BLOCKS[block_style]
        self.layers = nn.ModuleList(block(width, heads, context_length, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.context_length:
            raise ValueError(f"sequence length {t} exceeds context_length {self.context_length}")
        pos = torch.arange(t, device=tokens.device)
        h = self.drop(self.token_embeddings(tokens) + self.position_embeddings(pos))
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h))


def build_model(spec: ModelSpec, task_vocab_size: int,
                task_kind: str = "modular_arithmetic") -> DecoderTransformer:
    """Model for ``spec``; ``vocab_size`` 0 takes the task's; ``block_style`` ``auto`` is
    resolved for ``task_kind``; the position table has :meth:`ModelSpec.position_rows` rows
    (the paper's 5 for modular arithmetic). Initialised from the global torch RNG."""
    return DecoderTransformer(
        vocab_size=spec.vocab_size or task_vocab_size,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        context_length=spec.position_rows(task_kind),
        dropout=spec.dropout,
        block_style=spec.resolved_block_style(task_kind),
    )
