"""Model block styles and the paper's data order: shapes, causality, init, sampler replay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from services.training.engine import (Block, DecoderTransformer, ModelSpec, PaperBlock,
                                      StreamSampler, TaskSpec, build_components, build_model,
                                      default_spec)


class _MhaBlock(nn.Module):
    """Reference for PaperBlock built on torch's own nn.MultiheadAttention (sequence-first)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = h.shape[0]
        causal = torch.full((t, t), float("-inf")).triu(1)
        h = self.ln_1(h)
        h = h + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return h + self.mlp(self.ln_2(h))


class _MhaDecoder(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, heads: int, positions: int) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(vocab, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.layers = nn.ModuleList(_MhaBlock(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        h = (self.token_embeddings(tokens) + self.position_embeddings(torch.arange(tokens.shape[1]))).transpose(0, 1)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h)).transpose(0, 1)


def test_paper_style_initialises_and_computes_like_a_multihead_attention_decoder() -> None:
    torch.manual_seed(3)
    ref = _MhaDecoder(vocab=25, width=32, layers=2, heads=4, positions=5)
    torch.manual_seed(3)
    ours = DecoderTransformer(25, width=32, layers=2, heads=4, context_length=5, block_style="grokfast_paper")
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same random numbers in the same weights
    tokens = torch.randint(0, 25, (7, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(tokens), ref(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("style", ["pre_ln", "grokfast_paper"])
def test_logits_shape_and_context_limit(style: str) -> None:
    torch.manual_seed(0)
    model = DecoderTransformer(11, width=16, layers=2, heads=2, context_length=6, block_style=style)
    assert model(torch.zeros(3, 4, dtype=torch.long)).shape == (3, 4, 11)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 7, dtype=torch.long))


@pytest.mark.parametrize("style", ["pre_ln", "grokfast_paper"])
def test_attention_is_causal(style: str) -> None:
    torch.manual_seed(0)
    model = DecoderTransformer(11, width=16, layers=2, heads=2, context_length=6, block_style=style).eval()
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 11
    before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :4], after[:, :4])  # earlier positions never see position 4
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_auto_block_style_follows_the_task() -> None:
    spec = ModelSpec(layers=1, width=16, heads=2, context_length=8)
    assert isinstance(build_model(spec, 99, "modular_arithmetic").layers[0], PaperBlock)
    assert isinstance(build_model(spec, 259, "cognate").layers[0], Block)
    with pytest.raises(ValueError):
        DecoderTransformer(11, block_style="post_ln")


def test_stream_sampler_is_a_function_of_the_step() -> None:
    state = torch.Generator().manual_seed(5).get_state()
    sequential = StreamSampler(23, 5, state)  # 5 steps per epoch, last batch of 3
    walked = [sequential.indices(s).clone() for s in range(25)]
    for epoch in range(5):
        seen = torch.cat(walked[epoch * 5:(epoch + 1) * 5])
        assert sorted(seen.tolist()) == list(range(23))  # each epoch visits every example once
    assert not torch.equal(torch.cat(walked[:5]), torch.cat(walked[5:10]))
    for step in (0, 7, 24, 3):  # a fresh sampler (a resumed run), and going backwards
        assert torch.equal(StreamSampler(23, 5, state).indices(step), walked[step])
        assert torch.equal(sequential.indices(step), walked[step])
    # epoch e's order is epoch e-1's order permuted by the next draw of the stream
    gen = torch.Generator().set_state(state)
    first, second = torch.randperm(23, generator=gen), torch.randperm(23, generator=gen)
    assert torch.equal(torch.cat(walked[5:10]), first[second])


def test_paper_order_draws_split_after_the_model_init() -> None:
    spec = default_spec("modular_arithmetic").replace(
        task=TaskSpec(modulus=11, train_fraction=0.5),
        model=ModelSpec(layers=1, width=16, heads=2, context_length=5))
    parts = build_components(spec)
    torch.manual_seed(spec.seed)
    build_model(spec.model, 13, "modular_arithmetic")
    perm = torch.randperm(110)
    x, y = torch.cartesian_prod(torch.arange(11), torch.arange(1, 11)).T
    assert torch.equal(parts.task.train_inputs[:, 0], x[perm[:55]])
    assert torch.equal(parts.task.train_inputs[:, 2], y[perm[:55]])
    assert torch.equal(parts.sampler.indices(0), torch.randperm(55)[:spec.batch_size])
    again = build_components(spec)
    assert torch.equal(again.task.train_inputs, parts.task.train_inputs)


def test_paper_model_for_the_modular_task_has_the_references_five_position_rows() -> None:
    """A job asking for the task's 4 tokens gets the paper's 5-row table and initialisation."""
    models = {}
    for context in (4, 5):
        torch.manual_seed(0)
        models[context] = build_model(ModelSpec(layers=1, width=16, heads=2, context_length=context), 99,
                                      "modular_arithmetic")
    assert models[4].position_embeddings.weight.shape[0] == 5
    a, b = models[4].state_dict(), models[5].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # only the paper's model on the modular task: the pre-LN block and Cognate keep their length
    assert build_model(ModelSpec(layers=1, width=16, heads=2, context_length=4, block_style="pre_ln"), 99,
                       "modular_arithmetic").position_embeddings.weight.shape[0] == 4
    assert build_model(ModelSpec(layers=1, width=16, heads=2, context_length=8), 259,
                       "cognate").position_embeddings.weight.shape[0] == 8
