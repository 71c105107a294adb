"""GrokFast filters against hand-computed values and the paper's reference code."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from torch import nn

from services.training.engine import DecoderTransformer, GrokfastFilter, GrokfastSpec


def _param(values: list[float]) -> nn.Module:
    m = nn.Linear(len(values), 1, bias=False)
    return m


def _step(f: GrokfastFilter, m: nn.Module, grad: list[float]):
    m.weight.grad = torch.tensor([grad])
    stats = f.apply(m)
    return m.weight.grad[0].tolist(), stats


def test_ema_matches_hand_computed_values() -> None:
    m = _param([0, 0])
    f = GrokfastFilter(GrokfastSpec(kind="ema", alpha=0.5, lamb=2.0))
    g, s = _step(f, m, [1.0, 2.0])  # mu = g1 = [1, 2]; g = g1 + 2 mu
    assert g == [3.0, 6.0]
    assert s.slow_grad_norm == pytest.approx(math.sqrt(5))
    assert s.amplification_ratio == pytest.approx(3.0)
    g, s = _step(f, m, [3.0, -1.0])  # mu = .5*[1,2] + .5*[3,-1] = [2, .5]
    assert g == [7.0, 0.0]
    assert s.slow_grad_norm == pytest.approx(math.hypot(2, 0.5))
    assert s.amplification_ratio == pytest.approx(7 / math.sqrt(10))
    assert s.raw_grad_norm == pytest.approx(math.sqrt(10))


def test_ma_with_warmup_waits_for_a_full_window() -> None:
    m = _param([0, 0])
    f = GrokfastFilter(GrokfastSpec(kind="ma", window=2, lamb=1.0, warmup=True))
    g, s = _step(f, m, [1.0, 2.0])
    assert g == [1.0, 2.0] and not s.applied and s.amplification_ratio == 1.0
    g, s = _step(f, m, [3.0, -1.0])  # window [g1, g2], mean [2, .5]
    assert g == [5.0, -0.5] and s.applied
    g, _ = _step(f, m, [0.0, 4.0])  # window [g2, g3], mean [1.5, 1.5]
    assert g == [1.5, 5.5]


def test_ma_without_warmup_amplifies_from_the_first_step() -> None:
    m = _param([0, 0])
    f = GrokfastFilter(GrokfastSpec(kind="ma", window=3, lamb=1.0, warmup=False))
    assert _step(f, m, [1.0, 2.0])[0] == [2.0, 4.0]
    assert _step(f, m, [3.0, -2.0])[0] == [5.0, -2.0]  # mean [2, 0]


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_state_round_trip_continues_identically(kind: str) -> None:
    spec = GrokfastSpec(kind=kind, alpha=0.9, lamb=3.0, window=3)
    a, b = GrokfastFilter(spec), GrokfastFilter(spec)
    m = _param([0, 0])
    for grad in ([1.0, 2.0], [0.5, -1.0]):
        _step(a, m, grad)
    b.load_state_dict(a.state_dict())
    b.lamb = a.lamb
    for grad in ([2.0, 0.25], [-1.0, 1.0]):
        assert _step(a, m, grad)[0] == _step(b, m, grad)[0]


def test_live_alpha_lamb_changes_apply_to_the_next_call() -> None:
    m = _param([0, 0])
    f = GrokfastFilter(GrokfastSpec(kind="ema", alpha=0.5, lamb=2.0))
    _step(f, m, [1.0, 1.0])
    f.alpha, f.lamb = 0.0, 0.0
    g, s = _step(f, m, [4.0, 2.0])
    assert g == [4.0, 2.0] and s.amplification_ratio == 1.0
    with pytest.raises(ValueError):
        f.alpha = 1.0


# The paper's reference filters (github.com/ironjr/grokfast, grokfast.py), verbatim.
def gradfilter_ema(m, grads=None, alpha=0.98, lamb=2.0):
    if grads is None:
        grads = {n: p.grad.data.detach() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
    for n, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[n] = grads[n] * alpha + p.grad.data.detach() * (1 - alpha)
            p.grad.data = p.grad.data + grads[n] * lamb
    return grads


def gradfilter_ma(m, grads=None, window_size=100, lamb=5.0, filter_type="mean", warmup=True, trigger=False):
    if grads is None:
        grads = {n: deque(maxlen=window_size) for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
    for n, p in m.named_parameters():
        if p.requires_grad and p.grad is not None:
            grads[n].append(p.grad.data.detach())
            if not warmup or len(grads[n]) == window_size and not trigger:
                avg = sum(grads[n]) / len(grads[n])
                p.grad.data = p.grad.data + avg * lamb
    return grads


@pytest.mark.parametrize("kind", ["ema", "ma"])
def test_filter_is_bitwise_equal_to_the_paper_reference_on_a_transformer(kind: str) -> None:
    torch.manual_seed(0)
    model = DecoderTransformer(vocab_size=11, width=16, layers=1, heads=2, context_length=4)
    ours = GrokfastFilter(GrokfastSpec(kind=kind, alpha=0.9, lamb=2.0, window=3))
    ref_state = None
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        raw = {n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = raw[n].clone()
        ref_state = (gradfilter_ema(model, ref_state, alpha=0.9, lamb=2.0) if kind == "ema"
                     else gradfilter_ma(model, ref_state, window_size=3, lamb=2.0))
        expected = {n: p.grad.clone() for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = raw[n].clone()
        ours.apply(model, compute_stats=False)
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, expected[n]), n
