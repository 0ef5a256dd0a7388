"""D^3S sample level: keep the subset of responses whose advantages vary the most.

D^3S ("Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
Optimization", Wang et al., arXiv 2509.22115, ICLR 2026) down-samples at two levels:

1. *samples*: after the advantages are computed, keep the subset of rollouts that maximises the
   variance of their advantages, Var(A) (the paper shows it bounds the policy-gradient norm from
   above); D^3S-I selects within each prompt's group, D^3S-C across the groups of the batch;
2. *tokens*: of the kept samples, train the tokens with the highest |A_t| * H_t.  That is our
   existing credit path, ``algorithm.credit.criterion=advantage_entropy`` at scope ``group`` or
   ``batch`` (:mod:`rlvr.algo.credit`), with the token share ``1 - schedule.percentile``;

and both ratios follow a curriculum: aggressive early, relaxed late.  Here the kept share of
samples is the scheduled scalar ``schedule.sample_keep`` that the Scheduler broadcasts each step
beside the percentile (``configs/d3s.yaml``: 0.5 -> 1.0, percentile 0.8 -> 0, over 80% of training).

Selection (:func:`max_variance_rows`).  For a fixed size k, a variance-maximising subset of real
numbers x_(1) <= ... <= x_(n) is the j smallest plus the k - j largest for some j in [0, k] (PODS,
Xu et al., arXiv 2504.13818, prove the same for max-variance down-sampling of rewards).  Proof:
let S (|S| = k >= 2, mean m) hold x_i but not x_a and x_b with a < i < b in sorted order.  Swapping
x_i for y changes k * Var by (y - x_i) * [(y + x_i - 2m) - (y - x_i) / k].  Write
c = x_i (1 + 1/k) - 2m: the swap to y = x_b gains iff x_b (1 - 1/k) + c > 0, the swap to y = x_a
gains iff x_a (1 - 1/k) + c < 0; if neither gained, x_b (1 - 1/k) <= -c <= x_a (1 - 1/k), so
x_b <= x_a, i.e. x_a = x_i = x_b, and the swap leaves the multiset as it is.  So any S can be
moved, without lowering its variance, to one whose left-out elements form one contiguous run of
the sorted order, which is the form above.  We score the k + 1 candidates with prefix sums,
O(n log n) per row for the sort, and keep the first maximiser (smallest j).
``tests/test_d3s.py`` checks it against brute force over every subset.

How dropped samples leave the step: the loop ANDs the kept mask into the token mask before the
credit, so a dropped sample has advantage 0 and token_weight 0 on every token: it is no credit
candidate (it takes no slot of the top-k at group/batch scope), adds nothing to any loss
denominator (``aggregation_denominator`` reads token_weight only) and nothing to the loss or its KL
term.  The trainer's zero-advantage skip (``trainer.skip_zero_advantage``,
``rlvr.train.batching.contributing_samples``) leaves out whole *groups* with no contributing
sample, so cross-group selection saves the forward/backward of every fully dropped group, while a
sample dropped from a group that keeps others is still run (with zero weight, adding exactly 0).

Where we differ from the paper:
* The kept count is k = ceil(n * keep - 1e-6) (at least 1), as the credit's token count; the
  paper's exact rounding is not stated in what we read.
* The advantages are the ones computed on the full group (selection never renormalises them).
* The authors' code was not available to us (their paper promises it in the supplement), so the
  schedule shapes in ``configs/d3s.yaml`` are ours: linear, like the TP-Schedule configs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rlvr.registry import Registry

DownSampleFn = Callable[[Tensor, int, float], Tensor]


def num_kept(n: int, keep: float) -> int:
    """Kept of ``n`` at share ``keep`` in (0, 1]: ceil(n * keep - 1e-6) within [1, n]; 0 when n = 0."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"sample_keep must be a fraction in (0, 1], got {keep}")
    return min(n, max(1, math.ceil(n * keep - 1e-6))) if n else 0


def max_variance_rows(x: Tensor, k: int) -> Tensor:
    """x ``[U, n]`` -> bool ``[U, n]``: in each row, k entries of maximal (population) variance.

    The kept set of a row is its j smallest and k - j largest entries (ties in sorted, stable order),
    j the first maximiser of the variance over j = 0..k.
    """
    u, n = x.shape
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} entries")
    if k == n:
        return torch.ones_like(x, dtype=torch.bool)
    values, order = torch.sort(x.double(), dim=1, stable=True)
    zero = torch.zeros(u, 1, dtype=torch.float64, device=x.device)
    s1 = torch.cat([zero, values.cumsum(1)], 1)  # s1[:, i] = sum of the i smallest
    s2 = torch.cat([zero, (values * values).cumsum(1)], 1)
    j = torch.arange(k + 1, device=x.device)
    top = n - (k - j)  # the largest k - j are sorted positions top..n-1
    total1 = s1[:, j] + s1[:, -1:] - s1[:, top]
    total2 = s2[:, j] + s2[:, -1:] - s2[:, top]
    var = total2 / max(k, 1) - (total1 / max(k, 1)) ** 2
    best = var.argmax(dim=1, keepdim=True)  # the first maximiser
    pos = torch.arange(n, device=x.device)[None, :]
    kept_sorted = (pos < best) | (pos >= n - (k - best))
    return torch.zeros_like(kept_sorted).scatter_(1, order, kept_sorted)


def _check(advantages: Tensor, group_size: int) -> None:
    if advantages.dim() != 1:
        raise ValueError(f"advantages must be 1-D [N], got shape {tuple(advantages.shape)}")
    if group_size < 1 or advantages.numel() % group_size:
        raise ValueError(f"{advantages.numel()} samples are not divisible into groups of {group_size}")


def keep_all(advantages: Tensor, group_size: int, keep: float) -> Tensor:
    """No sample-level down-sampling: every sample kept, whatever ``keep`` says."""
    _check(advantages, group_size)
    return torch.ones_like(advantages, dtype=torch.bool)


def intra_group(advantages: Tensor, group_size: int, keep: float) -> Tensor:
    """D^3S-I: in each group of ``group_size`` contiguous rows, the num_kept(group_size, keep) of max Var(A)."""
    _check(advantages, group_size)
    rows = advantages.reshape(-1, group_size)
    return max_variance_rows(rows, num_kept(group_size, keep)).reshape(-1)


def cross_group(advantages: Tensor, group_size: int, keep: float) -> Tensor:
    """D^3S-C: of the whole batch, the num_kept(N, keep) samples of max Var(A)."""
    _check(advantages, group_size)
    return max_variance_rows(advantages[None, :], num_kept(advantages.numel(), keep)).reshape(-1)


DOWN_SAMPLING: Registry[DownSampleFn] = Registry("algorithm.down_sample", {
    "none": keep_all,
    "intra_group": intra_group,
    "cross_group": cross_group,
})


def down_sample(name: str, advantages: Tensor, group_size: int, keep: float) -> tuple[Tensor, dict[str, float]]:
    """advantages ``[N]`` -> (kept ``[N]`` bool, metrics): the kept share and Var(A) of all vs the kept samples."""
    kept = DOWN_SAMPLING.get(name)(advantages, group_size, keep)
    adv = advantages.double()
    metrics = {"kept_frac": float(kept.double().mean()) if kept.numel() else 1.0,
               "adv_var_all": float(adv.var(unbiased=False)) if adv.numel() else 0.0,
               "adv_var_kept": float(adv[kept].var(unbiased=False)) if bool(kept.any()) else 0.0}
    return kept, metrics
