"""Entropy-shaped advantages: a bounded exploration bonus added to the advantage.

"Reasoning with Exploration: An Entropy Perspective" (Cheng et al.,
arXiv 2506.14758) adds to every token's advantage a term built from the
policy's entropy at that token:

    A'_t = A_t + scale * min(alpha * H_t.detach(), |A_t| / kappa)

The entropy is detached, so the bonus changes the *weight* of a token's
gradient, never pushes the entropy itself; the cap at |A| / kappa keeps the
bonus below the reward signal (for scale < kappa it cannot flip the sign of a
negative advantage) and gives zero-advantage tokens no bonus.  ``scale`` is a scheduled scalar (``schedule.entropy_adv_scale``);
alpha and kappa come from :class:`~rlvr.config.EntropyAdvConfig`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def entropy_bonus(advantages: Tensor, entropy: Tensor, alpha: float = 0.4, kappa: float = 2.0) -> Tensor:
    """psi_t = min(alpha * H_t, |A_t| / kappa), [N, T], with H detached."""
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    return torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)


def shape_advantages(advantages: Tensor, entropy: Tensor, scale: float, alpha: float = 0.4,
                     kappa: float = 2.0) -> Tensor:
    """A' = A + scale * min(alpha * H.detach(), |A| / kappa); advantages and entropy [N, T]."""
    if advantages.shape != entropy.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} and entropy {tuple(entropy.shape)} differ")
    if scale == 0:
        return advantages
    return advantages + scale * entropy_bonus(advantages, entropy, alpha, kappa)
