"""Merge operators against hand-computed results (linear, SLERP) and the papers' properties
(TIES: trim, sign election, disjoint mean; DARE: drop rate and rescale)."""

from __future__ import annotations

import math

import pytest
import torch

from services.forge.merge import MergeError, dare, dare_mask, linear, merge_state_dicts, slerp, ties, trim_top_k


def test_linear_is_the_normalised_weighted_sum() -> None:
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0]), torch.tensor([0.0, 4.0])
    assert torch.equal(linear([a, b, c], [1, 1, 2]), torch.tensor([1.0, 2.0]))  # (1+3+0)/4, (2-2+8)/4
    assert torch.equal(linear([a, b], [2, 3], normalize=False), torch.tensor([11.0, -2.0]))
    with pytest.raises(MergeError):
        linear([a, torch.zeros(3)], [1, 1])


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_circle() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    torch.testing.assert_close(slerp(a, b, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    # scaled inputs: sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b with Ω = 90°
    torch.testing.assert_close(slerp(2 * a, 4 * b, 0.5), torch.tensor([2 * math.sqrt(0.5), 4 * math.sqrt(0.5)]))


def test_slerp_of_colinear_tensors_is_linear_interpolation() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(slerp(a, 3 * a, 0.25), 1.5 * a)


def test_ties_trims_elects_the_sign_of_the_larger_mass_and_averages_agreeing_values() -> None:
    base = torch.zeros(4)
    m1 = torch.tensor([3.0, -1.0, 0.5, 2.0])
    m2 = torch.tensor([1.0, 4.0, -0.2, -1.5])
    m3 = torch.tensor([-2.0, 2.0, 0.1, -0.25])
    # density 1: no trimming. Entry 0: sum 2 > 0 -> mean(3, 1) = 2. Entry 1: sum 5 -> mean(4, 2) = 3.
    # Entry 2: sum 0.4 -> mean(0.5, 0.1) = 0.3. Entry 3: sum 0.25 -> only 2.0 agrees -> 2.
    torch.testing.assert_close(ties(base, [m1, m2, m3], density=1.0), torch.tensor([2.0, 3.0, 0.3, 2.0]))
    # lambda scales the merged task vector; base is added back
    torch.testing.assert_close(ties(base + 1, [m1 + 1, m2 + 1, m3 + 1], density=1.0, lamb=0.5),
                               torch.tensor([2.0, 2.5, 1.15, 2.0]))
    # density 0.5 keeps the top 2 of 4 per task vector: m1 -> [3,0,0,2], m2 -> [0,4,0,-1.5], m3 -> [-2,2,0,0]
    # entry 0: 3 - 2 > 0 -> 3 (the -2 is elected out); entry 3: 2 - 1.5 > 0 -> 2
    torch.testing.assert_close(ties(base, [m1, m2, m3], density=0.5), torch.tensor([3.0, 3.0, 0.0, 2.0]))


def test_trim_keeps_the_top_fraction_by_magnitude() -> None:
    tau = torch.tensor([0.1, -5.0, 2.0, -0.3, 4.0, 0.0, 1.0, -2.5, 0.2, 3.0])
    kept = trim_top_k(tau, 0.3)
    assert torch.equal(kept, torch.tensor([0, -5.0, 0, 0, 4.0, 0, 0, 0, 0, 3.0]))


def test_dare_drops_at_rate_p_and_rescales_the_rest_by_one_over_one_minus_p() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = dare_mask(torch.Size([200_000]), 0.9, gen)
    assert abs((~mask).float().mean().item() - 0.9) < 0.005
    base = torch.full((100_000,), 1.0)
    model = base + 2.0  # task vector of 2 everywhere
    merged = dare(base, [model], [1.0], p=0.75, generator=torch.Generator().manual_seed(1))
    tau = merged - base
    kept = tau != 0
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(tau[kept], torch.full_like(tau[kept], 2.0 / 0.25))  # rescaled by 1/(1-p)
    assert abs(tau.mean().item() - 2.0) < 0.05  # the task vector is kept in expectation
    assert torch.equal(dare(base, [model], [1.0], p=0.0), model)  # p = 0 is task arithmetic


def test_state_dict_merge_needs_the_same_tensors() -> None:
    a = {"w": torch.ones(2, 2), "steps": torch.tensor(3)}
    b = {"w": torch.zeros(2, 2), "steps": torch.tensor(5)}
    merged = merge_state_dicts([a, b], lambda k, ts: linear(ts, [1, 1]))
    assert torch.equal(merged["w"], torch.full((2, 2), 0.5)) and merged["steps"].item() == 3
    with pytest.raises(MergeError, match="shapes differ"):
        merge_state_dicts([a, {"w": torch.zeros(3, 2), "steps": torch.tensor(1)}], lambda k, ts: ts[0])
    with pytest.raises(MergeError, match="different tensors"):
        merge_state_dicts([a, {"w": torch.zeros(2, 2)}], lambda k, ts: ts[0])
