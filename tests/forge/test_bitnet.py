"""BitNet b1.58: absmean ternary weights, packing, straight-through fine-tuning."""

from __future__ import annotations

import torch

from services.forge.bitnet import (BitLinear, absmean_ternary, bitnet_state_dict, convert_to_bitnet,
                                   dequantize_state_dict, mark_quantized, pack_ternary, unpack_ternary)
from services.training.engine.model import DecoderTransformer


def test_absmean_quantization_matches_the_papers_formula() -> None:
    w = torch.tensor([[0.4, -0.05, -1.2], [0.1, 0.0, 0.7]])
    ternary, gamma = absmean_ternary(w)
    assert abs(gamma.item() - 2.45 / 6) < 1e-6  # mean |W|
    # RoundClip(W / γ, -1, 1): 0.98 -> 1, -0.12 -> 0, -2.94 -> -1, 0.24 -> 0, 0 -> 0, 1.71 -> 1
    assert torch.equal(ternary, torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]]))


def test_pack_is_five_trits_per_byte_and_lossless() -> None:
    t = torch.randint(-1, 2, (7, 13), generator=torch.Generator().manual_seed(0)).float()
    packed = pack_ternary(t)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-91 // 5)
    assert torch.equal(unpack_ternary(packed, (7, 13)), t)


def test_converted_model_has_ternary_weights_runs_and_round_trips_its_storage_form() -> None:
    torch.manual_seed(0)
    model = DecoderTransformer(259, width=32, layers=2, heads=2, context_length=16)
    convert_to_bitnet(model)
    bits = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert len(bits) == 2 * 4  # qkv, proj, two MLP layers per block; head stays full precision
    tokens = torch.randint(0, 259, (3, 16), generator=torch.Generator().manual_seed(1))
    logits = model(tokens)
    assert logits.shape == (3, 16, 259) and torch.isfinite(logits).all()
    for m in bits:
        q = m.quantized_weight() / absmean_ternary(m.weight)[1]
        assert set(torch.unique(q).tolist()) <= {-1.0, 0.0, 1.0}

    state, stats = bitnet_state_dict(model)
    assert 1.6 <= stats["bits_per_weight"] < 1.7
    restored = mark_quantized(convert_to_bitnet(DecoderTransformer(259, width=32, layers=2, heads=2,
                                                                   context_length=16)))
    restored.load_state_dict(dequantize_state_dict(state))
    torch.testing.assert_close(restored(tokens), logits)
    for m in (x for x in restored.modules() if isinstance(x, BitLinear)):
        values = torch.unique(m.weight)
        assert len(values) <= 3 and torch.allclose(values.abs()[values != 0], values.abs().max())


def test_straight_through_estimator_trains_the_full_precision_weights() -> None:
    torch.manual_seed(0)
    layer = BitLinear(8, 4, activation_bits=8)
    x = torch.randn(16, 8)
    target = torch.randn(16, 4)
    before = layer.weight.detach().clone()
    loss = torch.nn.functional.mse_loss(layer(x), target)
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert not torch.equal(before, layer.weight)
