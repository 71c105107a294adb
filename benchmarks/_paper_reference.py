"""The GrokFast paper's training loop, written the reference code's way (the baseline).

Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", reference
code github.com/ironjr/grokfast ``main.py`` / ``grokfast.py`` (re-implemented here, not
copied): a decoder of ``nn.MultiheadAttention`` blocks whose first LayerNorm normalises
the residual stream, a position table of 5 rows (``[x, op, y, =, answer]``), one global
torch RNG stream for initialisation, the 50 % split and each epoch's shuffle (composed
with the previous epoch's order), Adam with L2 weight decay, the ``LambdaLR`` warmup
``1 if k > 10 else k / 10``, the Grokfast-EMA filter, full-validation evaluation once
per epoch.

It shares no code with the training engine on purpose: the benchmark and the tests
compare the service (``POST /v1/trainingJobs``) against this loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferenceResult", "reference_run"]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (T, B, C), sequence first
        t = h.shape[0]
        mask = torch.full((t, t), float("-inf"), device=h.device).triu(1)
        h = self.ln_1(h)
        h = h + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return h + self.mlp(self.ln_2(h))


class _Decoder(nn.Module):
    def __init__(self, vocab: int, width: int = 128, layers: int = 2, heads: int = 4, positions: int = 5) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(vocab, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.layers = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = (self.token_embeddings(tokens) + self.position_embeddings(pos)).transpose(0, 1)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h)).transpose(0, 1)


def _gradfilter_ema(model: nn.Module, grads: dict | None, alpha: float, lamb: float) -> dict:
    if grads is None:
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            grads[n] = grads[n] * alpha + p.grad.detach() * (1 - alpha)
            p.grad = p.grad + grads[n] * lamb
    return grads


@dataclass
class ReferenceResult:
    """``losses[k]``: training loss of step k+1; ``curve``: (step, validation accuracy) per epoch."""

    losses: list[float] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    steps_to_target: int | None = None


def reference_run(seed: int = 0, max_steps: int = 3000, target: float | None = 0.95, *, modulus: int = 97,
                  lr: float = 1e-3, weight_decay: float = 0.005, alpha: float = 0.98, lamb: float = 2.0,
                  grokfast: bool = True, batch_size: int = 512, warmup: int = 10) -> ReferenceResult:
    """Train x·y mod ``modulus`` the reference's way; stop at ``max_steps`` or at the first
    evaluation whose validation accuracy is >= ``target``."""
    torch.manual_seed(seed)
    p = modulus
    model = _Decoder(p + 2)
    x, y = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    inputs = torch.stack([x, torch.full_like(x, p + 1), y, torch.full_like(x, p)], dim=1)
    targets = x * y % p
    perm = torch.randperm(len(inputs))
    n_train = len(inputs) // 2
    train_x, train_y = inputs[perm[:n_train]], targets[perm[:n_train]]
    val_x, val_y = inputs[perm[n_train:]], targets[perm[n_train:]]
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 if k > warmup else k / warmup)
    grads: dict | None = None
    out = ReferenceResult()
    while len(out.losses) < max_steps:
        shuffle = torch.randperm(len(train_x))
        train_x, train_y = train_x[shuffle], train_y[shuffle]
        model.train()
        for bx, by in zip(train_x.split(batch_size), train_y.split(batch_size)):
            if len(out.losses) == max_steps:
                break
            loss = F.cross_entropy(model(bx)[:, -1], by)
            model.zero_grad()
            loss.backward()
            if grokfast:
                grads = _gradfilter_ema(model, grads, alpha, lamb)
            opt.step()
            sched.step()
            out.losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            acc = (model(val_x)[:, -1].argmax(-1) == val_y).float().mean().item()
        out.curve.append((len(out.losses), acc))
        if target is not None and acc >= target:
            out.steps_to_target = len(out.losses)
            break
    return out
