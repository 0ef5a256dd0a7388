"""Token credit: which tokens of a trajectory receive the policy gradient.

TP-Schedule ("Not only where, But when: Temporal Scheduling for RLVR",
arXiv 2605.25381) ranks the tokens of each trajectory by a *criterion* and
targets those above a per-trajectory percentile threshold; untargeted tokens
keep weight ``decay`` (0: no gradient).  The percentile itself is scheduled
over training (:mod:`rlvr.algo.schedules`); with the position criterion and
percentile 0.99 -> 0, training starts on the last tokens of each response and
widens to the whole response.

Criteria (:data:`CREDIT_CRITERIA`, higher score = more likely targeted):

- ``position``          t / L, t the 0-based index among the L valid tokens
- ``entropy``           H_t (high-entropy "forking" tokens)
- ``surprisal``         -logprob_t
- ``advantage_entropy`` |A_t| * H_t, as in D^3S
- ``none``              +inf: every valid token targeted at any percentile

Selection rule, per *scope unit* (one trajectory; the G trajectories of a
group pooled; or the whole batch pooled) with L valid tokens:
k = ceil(L * (1 - percentile) - 1e-6), the threshold is the k-th largest score
(+inf when k = 0) and every valid token scoring >= threshold is targeted, so
ties at the threshold are all targeted, percentile 0.99 targets at least one
token of any non-empty response, 1 none and 0 all.  A score of +inf is always
targeted, which is how ``none`` ignores the percentile.

Design: the threshold is found for all units at once on the padded batch,
never with a Python loop over trajectories: one ``topk`` along the row, taken
from whichever end needs fewer elements (the k-th largest is the
(L-k+1)-th smallest; padding is scored -inf or +inf accordingly), then a
gather.  A partial ``topk`` of at most half a row beats the full sort that
``torch.quantile`` does; ``bench/credit_bench.py`` times it against
``torch.quantile`` and the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlvr.config import CREDIT_SCOPES


@dataclass
class CreditInputs:
    """Per-token signals a criterion may rank by; all [N, T]."""

    token_mask: Tensor  # bool, valid response tokens
    entropy: Tensor | None = None  # H_t of the sampling policy
    logprob: Tensor | None = None  # log pi(y_t) of the sampling policy
    advantages: Tensor | None = None  # per-token advantage (broadcast)


CriterionFn = Callable[[CreditInputs], Tensor]


def _need(inputs: CreditInputs, field: str, criterion: str) -> Tensor:
    value = getattr(inputs, field)
    if value is None:
        raise ValueError(f"credit criterion '{criterion}' needs CreditInputs.{field}")
    return value


def position_score(inputs: CreditInputs) -> Tensor:
    """t / L: later tokens score higher; works for any layout of the valid tokens in the row.

    Scores of padding are unspecified (every criterion's are: token_credit ignores them).
    """
    mask = inputs.token_mask
    # float32 counts are exact and t / L distinct for L < 2^23, far beyond any response
    t = mask.cumsum(dim=-1, dtype=torch.float32).sub_(1.0)
    length = mask.sum(dim=-1, keepdim=True, dtype=torch.float32).clamp_(min=1.0)
    return t.div_(length)


def entropy_score(inputs: CreditInputs) -> Tensor:
    return _need(inputs, "entropy", "entropy").detach()


def surprisal_score(inputs: CreditInputs) -> Tensor:
    return -_need(inputs, "logprob", "surprisal").detach()


def advantage_entropy_score(inputs: CreditInputs) -> Tensor:
    adv = _need(inputs, "advantages", "advantage_entropy")
    return (adv.abs() * _need(inputs, "entropy", "advantage_entropy")).detach()


def none_score(inputs: CreditInputs) -> Tensor:
    return torch.full(inputs.token_mask.shape, float("inf"), device=inputs.token_mask.device)


CREDIT_CRITERIA: dict[str, CriterionFn] = {
    "none": none_score,
    "position": position_score,
    "entropy": entropy_score,
    "surprisal": surprisal_score,
    "advantage_entropy": advantage_entropy_score,
}

POLICY_STAT_CRITERIA = frozenset({"entropy", "surprisal", "advantage_entropy"})  # rank by the policy's log-prob/entropy


def _units(x: Tensor, scope: str, group_size: int) -> Tensor:
    """[N, T] -> [U, M]: one row per scope unit (rows of a group are contiguous)."""
    n = x.shape[0]
    if scope == "trajectory":
        return x
    if scope == "group":
        if group_size < 1 or n % group_size != 0:
            raise ValueError(f"{n} trajectories are not divisible into groups of group_size={group_size}")
        return x.reshape(n // group_size, -1)
    if scope == "batch":
        return x.reshape(1, -1)
    raise ValueError(f"unknown credit scope '{scope}'; valid scopes: {', '.join(CREDIT_SCOPES)}")


def kth_largest_threshold(score: Tensor, mask: Tensor, percentile: float) -> Tensor:
    """[U, M] scores and mask -> [U] threshold: k-th largest valid score, +inf when k = 0."""
    return _kth_largest(score, mask, mask.sum(dim=-1), percentile)


def _kth_largest(score: Tensor, mask: Tensor, length: Tensor, percentile: float) -> Tensor:
    """As :func:`kth_largest_threshold`, with the valid counts ``length`` [U] already known."""
    k = torch.ceil(length.double() * (1.0 - percentile) - 1e-6).long().clamp(min=0)
    k = torch.minimum(k, length)
    inf = torch.full((score.shape[0],), float("inf"), dtype=score.dtype, device=score.device)
    rank_low = torch.where(k > 0, length - k + 1, 0)  # 1-based rank of the same value from below
    need_top, need_low = int(k.max().item()), int(rank_low.max().item())
    if need_top == 0:
        return inf
    if need_top <= need_low:
        part = torch.topk(torch.where(mask, score, float("-inf")), need_top, dim=-1, largest=True).values
        kth = part.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1)
    else:
        part = torch.topk(torch.where(mask, score, float("inf")), need_low, dim=-1, largest=False).values
        kth = part.gather(1, (rank_low - 1).clamp(min=0)[:, None]).squeeze(1)
    return torch.where(k > 0, kth, inf)


def token_credit(score: Tensor, token_mask: Tensor, percentile: float, decay: float,
                 scope: str = "trajectory", group_size: int = 1) -> tuple[Tensor, Tensor, dict[str, float]]:
    """score, token_mask [N, T] -> (token_weight [N, T] float, targeted [N, T] bool, metrics).

    token_weight = token_mask * (targeted + decay * (1 - targeted)).
    """
    if not 0.0 <= percentile <= 1.0:
        raise ValueError(f"percentile must be a fraction in [0, 1], got {percentile}")
    if score.shape != token_mask.shape:
        raise ValueError(f"score {tuple(score.shape)} and token_mask {tuple(token_mask.shape)} differ")
    mask = token_mask.bool()
    unit_score, unit_mask = _units(score.detach(), scope, group_size), _units(mask, scope, group_size)
    length = unit_mask.sum(dim=-1)
    threshold = _kth_largest(unit_score, unit_mask, length, percentile)
    targeted = (unit_mask & (unit_score >= threshold[:, None])).reshape(mask.shape)
    if decay == 0.0:
        token_weight = targeted.to(torch.float32)
    else:  # in place: decay on valid tokens, then exactly 1.0 on the targeted ones
        token_weight = mask.to(torch.float32).mul_(decay).masked_fill_(targeted, 1.0)
    n_valid, n_targeted = int(length.sum()), int(torch.count_nonzero(targeted))
    metrics = {
        "targeted_frac": n_targeted / max(n_valid, 1),
        "token_weight_mean": (n_targeted + decay * (n_valid - n_targeted)) / max(n_valid, 1),
    }
    return token_weight, targeted, metrics


def get_criterion(name: str) -> CriterionFn:
    """The criterion registered as ``name``; an unknown name fails listing the valid ones."""
    if name not in CREDIT_CRITERIA:
        raise ValueError(f"unknown credit criterion '{name}'; valid names: {', '.join(CREDIT_CRITERIA)}")
    return CREDIT_CRITERIA[name]


def compute_token_weight(criterion: str, inputs: CreditInputs, percentile: float, decay: float,
                         scope: str = "trajectory", group_size: int = 1) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Score the tokens with ``criterion`` and select them with :func:`token_credit`."""
    score = get_criterion(criterion)(inputs)
    return token_credit(score, inputs.token_mask, percentile, decay, scope, group_size)
