"""Advantage estimators against hand-computed numbers."""

import math

import pytest
import torch

from rlvr.algo.advantages import ADVANTAGES

EPS = 1e-6
# Two groups of 4: [1, 0, 0, 1] (mean 0.5, unbiased std sqrt(1/3)) and [1, 1, 1, 1] (zero variance).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_grpo_hand_computed():
    adv, m = ADVANTAGES.get("grpo")(REWARDS, 4, EPS)
    a = 0.5 / (math.sqrt(1 / 3) + EPS)  # 0.8660...
    expected = torch.tensor([a, -a, -a, a, 0, 0, 0, 0], dtype=torch.float32)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert m["zero_variance_group_frac"] == 0.5
    assert m["reward_mean"] == pytest.approx(0.75)


def test_grpo_three_valued_group():
    adv, _ = ADVANTAGES.get("grpo")(torch.tensor([0.0, 1.0, 2.0]), 3, 0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0]))  # mean 1, unbiased std 1


def test_dr_grpo_hand_computed():
    adv, m = ADVANTAGES.get("dr_grpo")(torch.tensor([0.0, 1.0, 2.0, 3.0, 0.5, 0.5]), 3, EPS)
    # group 1 = [0, 1, 2]: mean 1; group 2 = [3, 0.5, 0.5]: mean 4/3, no std division
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, 5 / 3, -5 / 6, -5 / 6]))
    assert m["zero_variance_group_frac"] == 0.0


def test_rloo_hand_computed():
    # r = [1, 0, 0, 1]: baseline for r_0 is mean(0, 0, 1) = 1/3 -> 2/3; for r_1 it is 2/3 -> -2/3
    adv, m = ADVANTAGES.get("rloo")(REWARDS, 4, EPS)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-7)
    assert m["zero_variance_group_frac"] == 0.5


def test_rloo_equals_scaled_dr_grpo():
    r = torch.rand(24, generator=torch.Generator().manual_seed(0))
    rloo, _ = ADVANTAGES.get("rloo")(r, 6, EPS)
    dr, _ = ADVANTAGES.get("dr_grpo")(r, 6, EPS)
    torch.testing.assert_close(rloo, dr * 6 / 5)


def test_reinforce_pp_hand_computed():
    # batch mean 0.75, unbiased batch std sqrt(0.25 * 8 / 7 * 0.75) = sqrt(3/14)
    adv, m = ADVANTAGES.get("reinforce_pp")(REWARDS, 4, EPS)
    std = math.sqrt(((0.25 ** 2) * 6 + (0.75 ** 2) * 2) / 7)
    expected = (REWARDS.double() - 0.75) / (std + EPS)
    torch.testing.assert_close(adv, expected.float(), rtol=0, atol=1e-6)
    # the global baseline keeps a signal for the all-correct group; it is still counted
    assert (adv[4:] > 0).all()
    assert m["zero_variance_group_frac"] == 0.5


def test_reinforce_pp_constant_batch_is_zero():
    adv, m = ADVANTAGES.get("reinforce_pp")(torch.full((6,), 0.3), 3, EPS)
    assert torch.equal(adv, torch.zeros(6))
    assert m["zero_variance_group_frac"] == 1.0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_zero_variance_groups_are_exactly_zero(name):
    # 0.1 * 3 / 3 != 0.1 in floating point; the explicit handling must give exact zeros
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 0.0])
    adv, m = ADVANTAGES.get(name)(r, 3, EPS)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert (adv[6:] != 0).all()
    assert m["zero_variance_group_frac"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_indivisible_batch_raises(name):
    with pytest.raises(ValueError, match="not divisible by group_size=4"):
        ADVANTAGES.get(name)(torch.zeros(6), 4, EPS)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])  # reinforce_pp: one global baseline
def test_groups_are_independent_and_sum_to_zero(name):
    g = torch.Generator().manual_seed(1)
    r = torch.randint(0, 2, (32,), generator=g).float()
    adv, _ = ADVANTAGES.get(name)(r, 8, EPS)
    torch.testing.assert_close(adv.view(4, 8).sum(1), torch.zeros(4), rtol=0, atol=1e-5)
    adv_first, _ = ADVANTAGES.get(name)(r[:8], 8, EPS)
    torch.testing.assert_close(adv[:8], adv_first)


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo, reinforce_pp"):
        ADVANTAGES.get("ppo")
