"""Reinforce-Ada, the pure part: when a prompt stops being sampled, which responses form its group,
and the advantages against the statistics of every response collected for it.

Reinforce-Ada ("An Adaptive Sampling Framework for Reinforce-Style LLM Training", Xiong et al.,
arXiv 2510.04996; code: github.com/RLHFlow/Reinforce-Ada, and the Tinker port
RLHFlow/Reinforce-Ada-Tinker, ``tinker_cookbook/rl/adaptive_sampling.py``) samples in rounds: every
prompt still *active* gets more responses each round, and a prompt leaves the active set once it
has enough signal; then one fixed-size group per prompt is formed from what was collected.

The balanced variant (``Reinforce-Ada-balance``, the paper's better one), as the authors' code has it:

* exit (:func:`is_done`, ``algorithm.exit_rule``): ``balanced`` -- at least ``floor(G/2)`` positive
  *and* ``G - floor(G/2)`` negative responses collected (positive: reward > ``threshold``; the Tinker
  port uses 0.7 for 0/1 rewards); ``positive`` (Reinforce-Ada-pos) -- one positive collected; a
  prompt still active after the last round (the budget) keeps what it has;
* group (:func:`balanced_group`): ``floor(G/2)`` positives and the rest negatives, the earliest
  collected of each; when one kind is short, the other fills the group to ``G`` (the unfinished
  prompt's fallback);
* advantage (:func:`global_advantages`): baseline = mean reward of *all* responses collected for the
  prompt in this step (the "global statistics aggregated over the adaptive sampling phase"), not the
  mean of the formed group, whose balanced mean would be 0.5 by construction.

Where we differ, deliberately:
* Scale: the Tinker port only centres (r - global mean); we also divide by the unbiased std of all
  collected rewards when ``algorithm.advantage=grpo`` (GRPO's scale, on the same global sample) and
  only centre otherwise (``dr_grpo``).  A prompt whose collected rewards are all equal gets exactly 0.
* The authors keep a reward history per prompt across *epochs* for the global mean
  (``RewardHistory``); we use only this step's responses (one policy, one baseline).
* Each round samples ``G`` more responses per active prompt (their ``samples_per_round``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rlvr.registry import Registry


def targets(group_size: int) -> tuple[int, int]:
    """(positives, negatives) wanted in a balanced group of ``group_size``."""
    pos = group_size // 2
    return pos, group_size - pos


def balanced_exit(rewards: Sequence[float], group_size: int, threshold: float = 0.5) -> bool:
    """``balanced``: enough positives and negatives collected for a balanced group."""
    want_pos, want_neg = targets(group_size)
    pos = sum(r > threshold for r in rewards)
    return pos >= want_pos and len(rewards) - pos >= want_neg


def positive_exit(rewards: Sequence[float], group_size: int, threshold: float = 0.5) -> bool:
    """``positive`` (the paper's Reinforce-Ada-pos): one positive response collected."""
    return any(r > threshold for r in rewards)


EXIT_RULES: Registry[Callable[..., bool]] = Registry("algorithm.exit_rule", {
    "balanced": balanced_exit,
    "positive": positive_exit,
})


def is_done(rewards: Sequence[float], group_size: int, rule: str = "balanced", threshold: float = 0.5) -> bool:
    """Whether a prompt stops being sampled under exit ``rule``."""
    return EXIT_RULES.get(rule)(rewards, group_size, threshold)


def balanced_group(rewards: Sequence[float], group_size: int, threshold: float = 0.5) -> list[int]:
    """Indices (ascending) into ``rewards`` (collection order) of the group: balanced, else filled.

    ``len(rewards)`` must be at least ``group_size``.
    """
    if len(rewards) < group_size:
        raise ValueError(f"{len(rewards)} responses cannot form a group of {group_size}")
    positives = [i for i, r in enumerate(rewards) if r > threshold]
    negatives = [i for i, r in enumerate(rewards) if r <= threshold]
    want_pos, _ = targets(group_size)
    n_pos = min(want_pos, len(positives))
    n_neg = min(group_size - n_pos, len(negatives))
    n_pos = group_size - n_neg  # the negatives were short: positives fill the rest
    return sorted(positives[:n_pos] + negatives[:n_neg])


def global_advantages(group_rewards: Tensor, collected: Tensor, normalize: bool, eps: float) -> Tensor:
    """group_rewards ``[G]``, collected ``[m]`` (every reward of the prompt, the group's included) -> ``[G]``.

    (r - mean(collected)) / (std(collected) + eps) with ``normalize``, else r - mean(collected);
    exactly 0 when the collected rewards are all equal.
    """
    c = collected.double()
    if c.numel() < 2 or bool(c.amax() == c.amin()):
        return torch.zeros_like(group_rewards, dtype=torch.float32)
    adv = group_rewards.double() - c.mean()
    if normalize:
        adv = adv / (c.std(unbiased=True) + eps)
    return adv.float()


def prompt_advantages(rewards: Tensor, collected: Sequence[Sequence[float]], group_size: int, normalize: bool,
                      eps: float) -> tuple[Tensor, dict[str, float]]:
    """rewards ``[B]`` (the formed groups, contiguous) and each group's collected rewards -> (``[B]``, metrics).

    :func:`global_advantages` per group; ``zero_variance_group_frac`` counts the prompts whose collected
    rewards were all equal (no signal even after the extra rounds).
    """
    if rewards.dim() != 1 or rewards.numel() != group_size * len(collected):
        raise ValueError(f"{rewards.numel()} rewards are not {len(collected)} groups of {group_size}")
    groups = rewards.view(-1, group_size)
    adv = torch.cat([global_advantages(g, torch.tensor(c, dtype=torch.float64), normalize, eps)
                     for g, c in zip(groups, collected)]) if len(collected) else rewards.float()
    flat = [torch.tensor(c, dtype=torch.float64) for c in collected]
    zero = sum(1 for c in flat if c.numel() < 2 or bool(c.amax() == c.amin()))
    return adv, {"zero_variance_group_frac": zero / max(len(collected), 1)}
