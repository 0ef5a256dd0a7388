"""Off-policy corrections against a slow per-token / per-sequence reference, and the decoupled-PPO
identity that lets ``tis`` live in the advantages."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algo.losses import LossInputs, ppo_loss
from rlvr.algo.offpolicy import OFF_POLICY, OffPolicyInputs
from rlvr.config import LossConfig

N, T, CAP = 5, 7, 2.0


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5, 1, 6]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    behaviour = -torch.rand(N, T, generator=g) * 3
    old = behaviour + torch.randn(N, T, generator=g) * 0.8  # some tokens far off-policy
    old[1] = behaviour[1] + 2.0  # a sequence well above the cap
    old[3] = behaviour[3] - 2.0  # a sequence well below 1 / cap
    adv = torch.randn(N, 1, generator=g).expand(N, T) * mask
    weight = torch.rand(N, T, generator=g) * mask
    return OffPolicyInputs(adv.clone(), weight, mask, old, behaviour)


def test_tis_weights_each_token_by_its_truncated_ratio():
    inp = _inputs()
    adv, weight, old, metrics = OFF_POLICY.get("tis")(inp, CAP)
    for i in range(N):
        for t in range(T):
            if inp.token_mask[i, t]:
                w = min(math.exp(float(inp.old_logprob[i, t] - inp.behaviour_logprob[i, t])), CAP)
                assert float(adv[i, t]) == pytest.approx(float(inp.advantages[i, t]) * w, rel=1e-5)
    assert torch.equal(weight, inp.token_weight) and torch.equal(old, inp.old_logprob)
    ratios = [math.exp(float(inp.old_logprob[i, t] - inp.behaviour_logprob[i, t]))
              for i in range(N) for t in range(T) if inp.token_mask[i, t]]
    assert metrics["offpolicy/is_ratio_max"] == pytest.approx(max(ratios), rel=1e-5)
    assert metrics["offpolicy/is_ratio_mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    assert metrics["offpolicy/affected_frac"] == pytest.approx(sum(r > CAP for r in ratios) / len(ratios))


def test_mis_drops_whole_sequences_outside_the_band_by_their_geometric_mean_ratio():
    inp = _inputs()
    adv, weight, _, metrics = OFF_POLICY.get("mis")(inp, CAP)
    for i in range(N):
        n = int(inp.token_mask[i].sum())
        mean_log = sum(float(inp.old_logprob[i, t] - inp.behaviour_logprob[i, t]) for t in range(n)) / n
        keep = 1.0 / CAP <= math.exp(mean_log) <= CAP
        assert torch.equal(weight[i], inp.token_weight[i] if keep else torch.zeros(T))
    assert torch.count_nonzero(weight[1]) == 0 and torch.count_nonzero(weight[3]) == 0
    assert torch.equal(adv, inp.advantages)


def test_bypass_takes_the_ratio_against_the_behaviour_policy():
    inp = _inputs()
    adv, weight, old, _ = OFF_POLICY.get("bypass")(inp, CAP)
    assert torch.equal(old[inp.token_mask], inp.behaviour_logprob[inp.token_mask])
    assert torch.equal(adv, inp.advantages) and torch.equal(weight, inp.token_weight)


def test_on_policy_batch_is_left_alone_by_every_correction():
    inp = _inputs()
    inp.old_logprob = inp.behaviour_logprob.clone()
    for name in OFF_POLICY:
        adv, weight, old, metrics = OFF_POLICY.get(name)(inp, CAP)
        assert torch.equal(adv, inp.advantages) and torch.equal(weight, inp.token_weight)
        assert torch.allclose(old, inp.old_logprob)
        assert metrics["offpolicy/kl_behaviour"] == 0.0 and metrics["offpolicy/is_ratio_mean"] == 1.0


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_scaling_the_advantage_scales_the_clipped_token_loss(dual_clip):
    """Decoupled PPO: w * loss(r, A) == loss(r, w * A) for w >= 0, so tis can act on A alone."""
    inp = _inputs(1)
    g = torch.Generator().manual_seed(2)
    logprob = inp.old_logprob + torch.randn(N, T, generator=g) * 0.5
    w = torch.exp(inp.old_logprob - inp.behaviour_logprob).clamp(max=CAP)
    cfg = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=dual_clip, agg="token_mean")
    ones = inp.token_mask.float()

    def per_token(adv):
        return torch.stack([torch.stack([
            ppo_loss(LossInputs(logprob[i:i + 1, t:t + 1], inp.old_logprob[i:i + 1, t:t + 1],
                                adv[i:i + 1, t:t + 1], ones[i:i + 1, t:t + 1], inp.token_mask[i:i + 1, t:t + 1],
                                denom=1.0), cfg)[0] for t in range(T)]) for i in range(N)])

    assert torch.allclose(per_token(inp.advantages * w), w * per_token(inp.advantages), atol=1e-6)
