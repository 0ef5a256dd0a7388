"""Outcome advantages: one scalar reward per response -> one advantage per response.

Every estimator has the signature ``fn(rewards [B], group_size, eps) ->
(advantages [B], metrics)`` with ``B = num_groups * group_size`` and the
``group_size`` responses of one prompt in contiguous rows.  The advantage is
per *response*; the caller broadcasts it over the response's tokens (and the
token credit of :mod:`rlvr.algo.credit` then decides which tokens get it).

- ``grpo``        (r - mean_g) / (std_g + eps), unbiased std as in TRL/verl
                  (DeepSeekMath, arXiv 2402.03300)
- ``dr_grpo``     r - mean_g, no std normalisation (Dr. GRPO, arXiv 2503.20783)
- ``rloo``        r_i - mean of the other G-1 rewards (Ahmadian et al., arXiv 2402.14740)
- ``reinforce_pp`` (r - mean_B) / (std_B + eps), a global batch baseline
                  (REINFORCE++, arXiv 2501.03262)

Design: a group whose rewards are all equal carries no learning signal for the
group estimators; its advantages are set to exactly 0 (not "approximately 0
after floating-point cancellation"), so downstream code may test ``A == 0``.
``zero_variance_group_frac`` is reported for every estimator (DAPO's dynamic
sampling acts on it).  ``reinforce_pp`` keeps its global baseline for such
groups (an all-correct group is above the batch mean: that is its signal);
only a batch whose rewards are all equal gets exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.registry import Registry

AdvantageFn = Callable[[Tensor, int, float], tuple[Tensor, dict[str, float]]]


def _groups(rewards: Tensor, group_size: int, min_size: int = 2) -> Tensor:
    """View ``rewards [B]`` as ``[B / group_size, group_size]`` (float64 for exact group sums)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size}, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not divisible by group_size={group_size}; "
            "rows must be whole groups of contiguous responses"
        )
    return rewards.double().view(-1, group_size)


def _zero_variance(groups: Tensor) -> Tensor:
    """[num_groups] bool: every reward of the group is identical."""
    return groups.amax(dim=1) == groups.amin(dim=1)


def _finish(adv: Tensor, rewards: Tensor, zero_var: Tensor) -> tuple[Tensor, dict[str, float]]:
    adv = adv.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)
    metrics = {
        "zero_variance_group_frac": zero_var.double().mean().item(),
        "reward_mean": rewards.double().mean().item(),
        "reward_std": rewards.double().std(unbiased=False).item(),
        "advantage_abs_mean": adv.double().abs().mean().item(),
    }
    return adv, metrics


def grpo_advantages(rewards: Tensor, group_size: int, eps: float) -> tuple[Tensor, dict[str, float]]:
    """(r - group mean) / (unbiased group std + eps); zero-variance groups -> 0."""
    g = _groups(rewards, group_size)
    zero_var = _zero_variance(g)
    adv = (g - g.mean(dim=1, keepdim=True)) / (g.std(dim=1, unbiased=True, keepdim=True) + eps)
    return _finish(adv.masked_fill(zero_var[:, None], 0.0), rewards, zero_var)


def dr_grpo_advantages(rewards: Tensor, group_size: int, eps: float) -> tuple[Tensor, dict[str, float]]:
    """r - group mean (Dr. GRPO drops the std, which over-weights easy/hard prompts)."""
    g = _groups(rewards, group_size)
    zero_var = _zero_variance(g)
    adv = g - g.mean(dim=1, keepdim=True)
    return _finish(adv.masked_fill(zero_var[:, None], 0.0), rewards, zero_var)


def rloo_advantages(rewards: Tensor, group_size: int, eps: float) -> tuple[Tensor, dict[str, float]]:
    """r_i - mean_{j != i} r_j, the leave-one-out baseline (= G/(G-1) * (r_i - mean))."""
    g = _groups(rewards, group_size)
    zero_var = _zero_variance(g)
    others_mean = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return _finish((g - others_mean).masked_fill(zero_var[:, None], 0.0), rewards, zero_var)


def reinforce_pp_advantages(rewards: Tensor, group_size: int, eps: float) -> tuple[Tensor, dict[str, float]]:
    """(r - batch mean) / (unbiased batch std + eps): one global baseline, no per-prompt one."""
    g = _groups(rewards, group_size, min_size=1)
    flat = g.reshape(-1)
    if flat.numel() < 2 or bool(flat.amax() == flat.amin()):
        adv = torch.zeros_like(flat)  # no variance in the whole batch: no signal
    else:
        adv = (flat - flat.mean()) / (flat.std(unbiased=True) + eps)
    return _finish(adv, rewards, _zero_variance(g))


ADVANTAGES: Registry[AdvantageFn] = Registry("algorithm.advantage", {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
})
