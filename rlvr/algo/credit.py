"""Token credit: which tokens of a trajectory receive the policy gradient.

TP-Schedule ("Not only where, But when: Temporal Scheduling for RLVR",
arXiv 2605.25381) ranks the tokens of each trajectory by a *criterion* and
targets the top (1 - percentile) fraction of them; untargeted tokens keep
weight ``decay`` (0: no gradient).  The percentile itself is scheduled
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
group pooled; or the whole batch pooled) with L *candidate* tokens (the valid
tokens; for ``advantage_entropy`` only those with A != 0, see below): exactly

    k = ceil(L * (1 - percentile) - 1e-6)

tokens are targeted, the k highest-scoring, as the authors select forking
tokens with ``torch.topk`` (``compute_entropy_topk_response_mask`` in
``verl/trainer/ppo/ray_trainer.py`` of github.com/Jinghaoleven/RLVR-Schedule,
k = ceil(L * token_ratio), token_ratio = 1 - percentile).  Ties at the k-th
score are broken by position: **the later token wins** (later in the response;
at group/batch scope, later in the row-major order of the unit, so a later
trajectory of the unit wins over an earlier one).  A response of k-th-score
ties (in fp32 a confident token's entropy is exactly 0.0) is therefore cut
like the position criterion: at percentile 0.5 its last half is targeted.
Percentile 0.99 targets at least one token of any non-empty unit, 1 none and
0 all; the 1e-6 absorbs float error in L * (1 - percentile) (exact arithmetic
is the specification).  A score of +inf is always targeted, beyond k, which is
how ``none`` ignores the percentile.

``position`` is the authors' ``tp_schedule`` (``_agent_loop_postprocess`` in
``verl/experimental/agent_loop/agent_loop.py``): the first
``min(int(L * p), L - 1)`` response tokens become context and the rest is
trained, i.e. the last L - floor(L p) = ceil(L (1 - p)) tokens, our k.  Two
deliberate differences: at percentile 1 we target no token (they keep the last
one), and we count in exact arithmetic where their ``int(L * p)`` can truncate
a float product such as 100 * 0.29 = 28.999... to 28.

``advantage_entropy`` (|A| H, the D^3S token score) ranks only tokens with
A != 0: a zero-advantage token (e.g. every token of a group whose rewards are
all equal) is never targeted, is not counted in L, and gets token_weight 0
whatever ``decay`` is, because it carries no policy gradient and must not
dilute the others.  Since the loss multiplies the KL term by token_weight too,
such tokens get no KL gradient either.  For every other criterion a
zero-advantage token is an ordinary candidate.

Loss denominators (:func:`rlvr.algo.losses.aggregation_denominator`) follow
from token_weight alone.  ``token_mean`` divides by sum(token_weight) =
#targeted + decay * #untargeted candidates: non-candidates (padding, and
zero-advantage tokens under ``advantage_entropy``) add 0.  The ``seq_*``
modes divide by the number of sequences with some weight: a sequence with no
candidate (all padding, or A = 0 under ``advantage_entropy``) or with no
targeted token at decay 0 (only possible at percentile 1, or at group/batch
scope, where the k targeted tokens may all lie in other sequences) adds 0.
Metrics are over the candidates: ``targeted_frac`` is #targeted / #candidates
(about 1 - percentile) and ``token_weight_mean`` is sum(token_weight) /
#candidates.

Design: the threshold (k-th largest score) is found for all units at once on
the padded batch, never with a Python loop over trajectories: one ``topk``
along the row, taken from whichever end needs fewer elements (the k-th largest
is the (L-k+1)-th smallest; padding is scored -inf or +inf accordingly), then
a gather.  Tokens above the threshold are targeted, and the k - #above ties
still needed are taken from the end of the unit with one reversed cumulative
count.  A partial ``topk`` of at most half a row beats the full sort that
``torch.quantile`` does; ``bench/credit_bench.py`` times it against
``torch.quantile`` and the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rlvr.config import CREDIT_SCOPES
from rlvr.registry import Registry


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


CREDIT_CRITERIA: Registry[CriterionFn] = Registry("algorithm.credit.criterion", {
    "none": none_score,
    "position": position_score,
    "entropy": entropy_score,
    "surprisal": surprisal_score,
    "advantage_entropy": advantage_entropy_score,
})

POLICY_STAT_CRITERIA = frozenset({"entropy", "surprisal", "advantage_entropy"})  # rank by the policy's log-prob/entropy
NONZERO_ADVANTAGE_CRITERIA = frozenset({"advantage_entropy"})  # rank only tokens with A != 0


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


def num_targeted(length: Tensor, percentile: float) -> Tensor:
    """[U] candidate counts L -> [U] k = ceil(L * (1 - percentile) - 1e-6), clipped to [0, L]."""
    k = torch.ceil(length.double() * (1.0 - percentile) - 1e-6).long().clamp(min=0)
    return torch.minimum(k, length)


def kth_largest_threshold(score: Tensor, mask: Tensor, percentile: float) -> Tensor:
    """[U, M] scores and mask -> [U] threshold: k-th largest valid score, +inf when k = 0."""
    length = mask.sum(dim=-1)
    return _kth_largest(score, mask, length, num_targeted(length, percentile))


def _kth_largest(score: Tensor, mask: Tensor, length: Tensor, k: Tensor) -> Tensor:
    """As :func:`kth_largest_threshold`, with the valid counts ``length`` [U] and ``k`` [U] known."""
    inf = torch.full((score.shape[0],), float("inf"), dtype=score.dtype, device=score.device)
    rank_low = torch.where(k > 0, length - k + 1, 0)  # 1-based rank of the same value from below
    if k.numel() == 0 or int(k.max()) == 0:
        return inf
    need_top, need_low = int(k.max()), int(rank_low.max())
    if need_top <= need_low:
        part = torch.topk(torch.where(mask, score, float("-inf")), need_top, dim=-1, largest=True).values
        kth = part.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1)
    else:
        part = torch.topk(torch.where(mask, score, float("inf")), need_low, dim=-1, largest=False).values
        kth = part.gather(1, (rank_low - 1).clamp(min=0)[:, None]).squeeze(1)
    return torch.where(k > 0, kth, inf)


def top_k_later_wins(score: Tensor, mask: Tensor, k: Tensor) -> Tensor:
    """[U, M] scores and mask, [U] k -> [U, M] bool: exactly the k largest valid scores of each row.

    Ties at the k-th score go to the later positions of the row; +inf scores are always selected.
    """
    threshold = _kth_largest(score, mask, mask.sum(dim=-1), k)[:, None]
    above = mask & (score > threshold)
    tied = mask & (score == threshold)
    room = k - above.sum(dim=-1)  # ties still needed to reach k
    if bool((tied.sum(dim=-1) > room).any()):  # skip the count when no row has surplus ties
        from_end = tied.flip(-1).cumsum(dim=-1).flip(-1)  # 1 at the last tie, 2 at the one before, ...
        tied &= from_end <= room[:, None]
    return above | tied | (mask & torch.isposinf(score))


def token_credit(score: Tensor, token_mask: Tensor, percentile: float, decay: float,
                 scope: str = "trajectory", group_size: int = 1) -> tuple[Tensor, Tensor, dict[str, float]]:
    """score, token_mask [N, T] -> (token_weight [N, T] float, targeted [N, T] bool, metrics).

    ``token_mask`` marks the candidates; token_weight = token_mask * (targeted + decay * (1 - targeted)).
    """
    if not 0.0 <= percentile <= 1.0:
        raise ValueError(f"percentile must be a fraction in [0, 1], got {percentile}")
    if score.shape != token_mask.shape:
        raise ValueError(f"score {tuple(score.shape)} and token_mask {tuple(token_mask.shape)} differ")
    mask = token_mask.bool()
    unit_score, unit_mask = _units(score.detach(), scope, group_size), _units(mask, scope, group_size)
    length = unit_mask.sum(dim=-1)
    targeted = top_k_later_wins(unit_score, unit_mask, num_targeted(length, percentile)).reshape(mask.shape)
    if decay == 0.0:
        token_weight = targeted.to(torch.float32)
    else:  # in place: decay on candidate tokens, then exactly 1.0 on the targeted ones
        token_weight = mask.to(torch.float32).mul_(decay).masked_fill_(targeted, 1.0)
    n_valid, n_targeted = int(length.sum()), int(torch.count_nonzero(targeted))
    metrics = {
        "targeted_frac": n_targeted / max(n_valid, 1),
        "token_weight_mean": (n_targeted + decay * (n_valid - n_targeted)) / max(n_valid, 1),
    }
    return token_weight, targeted, metrics


def candidate_mask(criterion: str, inputs: CreditInputs) -> Tensor:
    """[N, T] bool: the valid tokens ``criterion`` ranks, less those with A = 0 for |A|-scaled criteria."""
    mask = inputs.token_mask.bool()
    if criterion in NONZERO_ADVANTAGE_CRITERIA:
        return mask & (_need(inputs, "advantages", criterion) != 0)
    return mask


def compute_token_weight(criterion: str, inputs: CreditInputs, percentile: float, decay: float,
                         scope: str = "trajectory", group_size: int = 1) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Score the tokens with ``criterion`` and select exactly k of its candidates with :func:`token_credit`.

    Weights and metrics are over :func:`candidate_mask`: 0 on padding and, for ``advantage_entropy``,
    on zero-advantage tokens at any ``decay``.
    """
    score = CREDIT_CRITERIA.get(criterion)(inputs)
    return token_credit(score, candidate_mask(criterion, inputs), percentile, decay, scope, group_size)
