"""Decoder-only causal transformer sized by :class:`ModelSpec`.

Token + learned position embeddings, pre-LN blocks (causal multi-head self-attention, GELU
MLP of 4x width), final LayerNorm and an untied output head. Attention is written out
(matmul, mask, softmax) so it is deterministic on every backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ModelSpec

__all__ = ["CausalSelfAttention", "Block", "DecoderTransformer", "build_model"]


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


class DecoderTransformer(nn.Module):
    """``forward(tokens (B, T) int64) -> logits (B, T, vocab)``, T <= context_length."""

    def __init__(self, vocab_size: int, width: int = 128, layers: int = 2, heads: int = 4,
                 context_length: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(context_length, width)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(Block(width, heads, context_length, dropout) for _ in range(layers))
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


def build_model(spec: ModelSpec, task_vocab_size: int) -> DecoderTransformer:
    """Model for ``spec``; ``vocab_size`` 0 takes the task's. Uses the global torch RNG."""
    return DecoderTransformer(
        vocab_size=spec.vocab_size or task_vocab_size,
        width=spec.width,
        layers=spec.layers,
        heads=spec.heads,
        context_length=spec.context_length,
        dropout=spec.dropout,
    )
