"""Policy losses: one input type, one output shape, each variant its own function.

Every loss is ``fn(inp: LossInputs, cfg: LossConfig) -> (scalar loss, metrics)``
with metrics computed under ``no_grad`` beside the math.  A loss never decides
*which* tokens learn: that is the per-token ``token_weight`` computed before
the trainer by :mod:`rlvr.algo.credit` (TP-Schedule, arXiv 2605.25381: the
untargeted tokens get weight ``decay``, 0 on padding).  The per-token loss,
including the KL term, is multiplied by ``token_weight`` before aggregation,
so a token of weight 0 contributes neither value nor gradient.

- ``ppo``  token ratio exp(logprob - old_logprob), clipped to
  [1 - clip_low, 1 + clip_high] (PPO, arXiv 1707.06347; DAPO clip-higher,
  arXiv 2503.14476), optional dual clip for A < 0 (Ye et al., arXiv 1912.09729).
- ``gspo`` sequence ratio s_i = exp(weighted mean_t (logprob - old_logprob)),
  applied per token as sg(s_i) * exp(logprob - sg(logprob)) and clipped at
  sequence level (GSPO, arXiv 2507.18071).

Aggregation (:data:`AGGREGATIONS`) is a sum of weighted token losses divided by
a denominator that counts only weighted tokens (``token_mean``) or sequences
with some weight (``seq_*``).  Because every mode is a plain sum over rows
divided by one number, passing the *whole batch's* denominator as
``inp.denom`` (see :func:`aggregation_denominator`) makes the losses of
micro-batches and data-parallel ranks add up exactly to the full-batch loss;
the trainer relies on this for gradient accumulation.

KL estimators (:data:`KL_ESTIMATORS`) follow Schulman, "Approximating KL
Divergence" (2020): with log r = logprob_q - logprob_p on samples from p,
k1 = -log r, k2 = (log r)^2 / 2, k3 = (r - 1) - log r.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rlvr.config import LossConfig
from rlvr.registry import Registry

# ----------------------------------------------------------------------------- KL estimators
KLFn = Callable[[Tensor, Tensor], Tensor]


def kl_k1(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """k1 = log p - log q: unbiased for KL(p || q) on samples of p, high variance, can be < 0."""
    return logprob - ref_logprob


def kl_k2(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """k2 = (log p - log q)^2 / 2: biased, low variance, >= 0."""
    return 0.5 * (logprob - ref_logprob) ** 2


def kl_k3(logprob: Tensor, ref_logprob: Tensor) -> Tensor:
    """k3 = (q/p - 1) - log(q/p): unbiased for KL(p || q), >= 0 (used by GRPO)."""
    log_r = ref_logprob - logprob
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: Registry[KLFn] = Registry("algorithm.loss.kl_estimator", {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3})


# ----------------------------------------------------------------------------- aggregation
AggFn = Callable[[Tensor, Tensor, int, float | None], Tensor]


def _safe(denom: Tensor | float) -> Tensor | float:
    """A zero denominator only happens with a zero numerator: divide by 1 instead of 0."""
    if isinstance(denom, Tensor):
        return torch.where(denom > 0, denom, torch.ones_like(denom))
    return denom if denom > 0 else 1.0


def _num_seqs(token_weight: Tensor) -> Tensor:
    return (token_weight.sum(dim=-1) > 0).sum().to(token_weight.dtype)


def agg_token_mean(loss: Tensor, token_weight: Tensor, norm_len: int, denom: float | None) -> Tensor:
    """sum_{i,t} w l / sum_{i,t} w (DAPO token-level mean)."""
    d = token_weight.sum() if denom is None else denom
    return (token_weight * loss).sum() / _safe(d)


def agg_seq_mean_token_sum(loss: Tensor, token_weight: Tensor, norm_len: int, denom: float | None) -> Tensor:
    """mean over sequences of sum_t w l."""
    d = _num_seqs(token_weight) if denom is None else denom
    return (token_weight * loss).sum() / _safe(d)


def agg_seq_mean_token_mean(loss: Tensor, token_weight: Tensor, norm_len: int, denom: float | None) -> Tensor:
    """mean over sequences of sum_t w l / sum_t w (the original GRPO objective)."""
    per_seq = (token_weight * loss).sum(dim=-1) / _safe(token_weight.sum(dim=-1))
    d = _num_seqs(token_weight) if denom is None else denom
    return per_seq.sum() / _safe(d)


def agg_seq_mean_token_sum_norm(loss: Tensor, token_weight: Tensor, norm_len: int, denom: float | None) -> Tensor:
    """mean over sequences of sum_t w l / norm_len (Dr. GRPO: a constant, the generation budget)."""
    d = _num_seqs(token_weight) if denom is None else denom
    return (token_weight * loss).sum() / float(norm_len) / _safe(d)


AGGREGATIONS: Registry[AggFn] = Registry("algorithm.loss.agg", {
    "token_mean": agg_token_mean,
    "seq_mean_token_sum": agg_seq_mean_token_sum,
    "seq_mean_token_mean": agg_seq_mean_token_mean,
    "seq_mean_token_sum_norm": agg_seq_mean_token_sum_norm,
})


def aggregation_denominator(agg: str, token_weight: Tensor) -> float:
    """Whole-batch denominator of ``agg``: sum of weights, or number of sequences with weight."""
    AGGREGATIONS.get(agg)  # an unknown name fails here, listing the valid ones
    if agg == "token_mean":
        return float(token_weight.double().sum().item())
    return float((token_weight.sum(dim=-1) > 0).sum().item())


# ----------------------------------------------------------------------------- losses
@dataclass
class LossInputs:
    """Everything a policy loss sees; all tensors are [N, T] (N sequences, T response tokens)."""

    logprob: Tensor  # log pi_theta(y_t), current policy, requires grad
    old_logprob: Tensor  # log pi_old(y_t), the policy that generated (or the last update's)
    advantages: Tensor  # per-token advantage, already broadcast/shaped
    token_weight: Tensor  # float credit weight; 0 on padding (and on untargeted tokens when decay=0)
    token_mask: Tensor  # bool, valid response tokens
    ref_logprob: Tensor | None = None  # log pi_ref(y_t), needed when kl_coef > 0
    norm_len: int = 1  # Dr. GRPO constant normaliser (the generation budget)
    denom: float | None = None  # whole-batch aggregation denominator (micro-batching / DP)


LossFn = Callable[[LossInputs, LossConfig], tuple[Tensor, dict[str, float]]]


def _clipped_surrogate(ratio: Tensor, adv: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token max(-A r, -A clip(r)), dual-clipped; also where each side of the clip binds."""
    low, high = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(low, high))
    if cfg.dual_clip is not None:
        # For A < 0 the unclipped branch grows without bound in r; cap it at -A * c.
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * cfg.dual_clip), loss)
    with torch.no_grad():
        binds_low = (adv < 0) & (ratio < low)
        binds_high = (adv > 0) & (ratio > high)
    return loss, binds_low, binds_high


def _without_padding(inp: LossInputs) -> LossInputs:
    """Zero every input on padding, so garbage there (inf, nan) can't reach the loss or its gradient.

    Multiplying by a zero weight is not enough: 0 * inf = nan, and the backward of
    exp at an overflowing padded ratio would be 0 * inf too.
    """
    mask = inp.token_mask.bool()

    def clean(x: Tensor | None) -> Tensor | None:
        return None if x is None else torch.where(mask, x, 0.0)

    return replace(inp, logprob=clean(inp.logprob), old_logprob=clean(inp.old_logprob),
                   advantages=clean(inp.advantages), ref_logprob=clean(inp.ref_logprob),
                   token_weight=clean(inp.token_weight))


def _weighted_mean(x: Tensor, w: Tensor) -> float:
    return float(((w * x).sum() / _safe(w.sum())).item())


def _finish(pg_loss: Tensor, ratio: Tensor, binds: tuple[Tensor, Tensor], inp: LossInputs,
            cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """Add the KL term, aggregate, and compute the shared metrics under no_grad."""
    aggregate = AGGREGATIONS.get(cfg.agg)
    if cfg.kl_coef > 0 and inp.ref_logprob is None:
        raise ValueError("LossConfig.kl_coef > 0 needs LossInputs.ref_logprob")
    w = inp.token_weight
    token_loss = pg_loss
    kl_ref = None
    if inp.ref_logprob is not None:
        kl_ref = KL_ESTIMATORS.get(cfg.kl_estimator)(inp.logprob, inp.ref_logprob)
        if cfg.kl_coef > 0:
            token_loss = token_loss + cfg.kl_coef * kl_ref
    loss = aggregate(token_loss, w, inp.norm_len, inp.denom)
    with torch.no_grad():
        wd = w.detach().double()
        metrics = {
            "clip_frac_low": _weighted_mean(binds[0].double(), wd),
            "clip_frac_high": _weighted_mean(binds[1].double(), wd),
            "ratio_mean": _weighted_mean(ratio.detach().double(), wd),
            "approx_kl": _weighted_mean(kl_k3(inp.old_logprob, inp.logprob.detach()).double(), wd),
        }
        if kl_ref is not None:
            metrics["kl_ref"] = _weighted_mean(kl_ref.detach().double(), wd)
    return loss, metrics


def ppo_loss(inp: LossInputs, cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """Token-level clipped surrogate with ratio exp(logprob - old_logprob)."""
    inp = _without_padding(inp)
    ratio = torch.exp(inp.logprob - inp.old_logprob)
    pg_loss, binds_low, binds_high = _clipped_surrogate(ratio, inp.advantages, cfg)
    return _finish(pg_loss, ratio, (binds_low, binds_high), inp, cfg)


def gspo_loss(inp: LossInputs, cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """Sequence-level ratio s_i, applied per token as sg(s_i) * exp(logprob - sg(logprob)).

    The value of every token's ratio is s_i, so the clip acts on the sequence;
    the gradient of a token is s_i * grad logprob_t, GSPO-token's form, which
    under ``seq_mean_token_mean`` equals GSPO's sequence gradient.
    """
    inp = _without_padding(inp)
    w = inp.token_weight
    log_ratio = inp.logprob - inp.old_logprob
    seq_log_ratio = (w * log_ratio).sum(dim=-1) / _safe(w.sum(dim=-1))
    seq_ratio = torch.exp(seq_log_ratio.detach())[:, None]
    ratio = seq_ratio * torch.exp(inp.logprob - inp.logprob.detach())
    pg_loss, binds_low, binds_high = _clipped_surrogate(ratio, inp.advantages, cfg)
    return _finish(pg_loss, ratio, (binds_low, binds_high), inp, cfg)


POLICY_LOSSES: Registry[LossFn] = Registry("algorithm.loss.name", {"ppo": ppo_loss, "gspo": gspo_loss})
