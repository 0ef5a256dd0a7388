"""Policy losses: clip boundaries, aggregation vs slow loops, micro-batching, KL, token weights."""

import math

import pytest
import torch

from rlvr.algo.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    LossInputs,
    aggregation_denominator,
    gspo_loss,
    ppo_loss,
)
from rlvr.config import LossConfig


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons in float64, restored so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def one_token(ratio, adv, cfg):
    """Loss, d loss / d logprob and metrics of a single token with the given ratio."""
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    inp = LossInputs(lp, torch.zeros(1, 1), torch.tensor([[adv]]), torch.ones(1, 1),
                     torch.ones(1, 1, dtype=torch.bool))
    loss, m = ppo_loss(inp, cfg)
    loss.backward()
    return loss.item(), lp.grad.item(), m


CLIP = LossConfig(clip_low=0.2, clip_high=0.28)  # asymmetric, DAPO clip-higher
D = 1e-4


@pytest.mark.parametrize(
    "ratio, adv, clipped, side",
    [
        (1.28 - D, 1.0, False, None), (1.28 + D, 1.0, True, "high"),  # A > 0: only the top binds
        (0.8 - D, 1.0, False, None), (0.8 + D, 1.0, False, None),
        (0.8 + D, -2.0, False, None), (0.8 - D, -2.0, True, "low"),  # A < 0: only the bottom binds
        (1.28 + D, -2.0, False, None), (1.28 - D, -2.0, False, None),
        (1.0, 0.0, False, None),
    ],
)
def test_ppo_clip_boundaries(ratio, adv, clipped, side):
    loss, grad, m = one_token(ratio, adv, CLIP)
    bound = min(max(ratio, 0.8), 1.28)
    assert loss == pytest.approx(max(-adv * ratio, -adv * bound), abs=1e-12)
    # d(-A r)/d logprob = -A r where unclipped, 0 where the clip binds
    assert grad == pytest.approx(0.0 if clipped else -adv * ratio, abs=1e-12)
    assert m["clip_frac_low"] == (1.0 if side == "low" else 0.0)
    assert m["clip_frac_high"] == (1.0 if side == "high" else 0.0)
    assert m["ratio_mean"] == pytest.approx(ratio)


def test_dual_clip():
    cfg = LossConfig(clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    loss, grad, _ = one_token(5.0, -2.0, cfg)  # |A| r = 10 capped at |A| c = 6
    assert loss == pytest.approx(6.0) and grad == 0.0
    loss, grad, _ = one_token(2.0, -2.0, cfg)  # below the cap: plain unclipped branch
    assert loss == pytest.approx(4.0) and grad == pytest.approx(4.0)
    loss, grad, _ = one_token(5.0, 2.0, cfg)  # A > 0: the ordinary clip, dual clip not involved
    assert loss == pytest.approx(-2.4) and grad == 0.0
    loss, _, _ = one_token(5.0, -2.0, LossConfig(clip_low=0.2, clip_high=0.2))
    assert loss == pytest.approx(10.0)  # without dual clip the loss is unbounded


def ragged_batch(n=6, t=9, seed=0, decay_zero_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 1, 5, 0, 7, 3][:n])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    old = -torch.rand(n, t, generator=g) * 3
    lp = (old + 0.3 * torch.randn(n, t, generator=g)).requires_grad_(True)
    adv = torch.randn(n, 1, generator=g).expand(n, t).clone()
    w = torch.where(torch.rand(n, t, generator=g) < decay_zero_frac, 0.25, 1.0) * mask
    ref = old + 0.1 * torch.randn(n, t, generator=g)
    return LossInputs(lp, old, adv, w, mask, ref_logprob=ref, norm_len=12)


def reference_loss(inp, cfg):
    """Slow per-token Python loop of the documented PPO objective and aggregation."""
    n, t = inp.logprob.shape
    low, high = 1 - cfg.clip_low, 1 + cfg.clip_high
    seq_sums, seq_wsums, total, wtotal = [], [], 0.0, 0.0
    for i in range(n):
        s, ws = 0.0, 0.0
        for j in range(t):
            if not inp.token_mask[i, j]:
                continue
            r = math.exp(inp.logprob[i, j].item() - inp.old_logprob[i, j].item())
            a = inp.advantages[i, j].item()
            tok = max(-a * r, -a * min(max(r, low), high))
            lr = inp.ref_logprob[i, j].item() - inp.logprob[i, j].item()
            tok += cfg.kl_coef * (math.exp(lr) - 1 - lr)
            w = inp.token_weight[i, j].item()
            s, ws = s + w * tok, ws + w
        seq_sums.append(s), seq_wsums.append(ws)
        total, wtotal = total + s, wtotal + ws
    live = [i for i in range(n) if seq_wsums[i] > 0]
    return {
        "token_mean": total / wtotal,
        "seq_mean_token_sum": sum(seq_sums[i] for i in live) / len(live),
        "seq_mean_token_mean": sum(seq_sums[i] / seq_wsums[i] for i in live) / len(live),
        "seq_mean_token_sum_norm": sum(seq_sums[i] / inp.norm_len for i in live) / len(live),
    }[cfg.agg]


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_aggregation_matches_reference_loop(agg):
    inp = ragged_batch()
    cfg = LossConfig(agg=agg, kl_coef=0.05, kl_estimator="k3")
    loss, m = ppo_loss(inp, cfg)
    assert loss.item() == pytest.approx(reference_loss(inp, cfg), rel=1e-12)
    assert "kl_ref" in m


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_micro_batches_with_denom_sum_to_full_batch(name, agg):
    inp = ragged_batch()
    cfg = LossConfig(name=name, agg=agg, kl_coef=0.05)
    full, _ = POLICY_LOSSES.get(name)(inp, cfg)
    (g_full,) = torch.autograd.grad(full, inp.logprob)
    denom = aggregation_denominator(agg, inp.token_weight)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 3), slice(3, 6)):  # uneven split, one all-padding row alone
        part = LossInputs(inp.logprob[rows], inp.old_logprob[rows], inp.advantages[rows],
                          inp.token_weight[rows], inp.token_mask[rows], inp.ref_logprob[rows],
                          inp.norm_len, denom)
        total = total + POLICY_LOSSES.get(name)(part, cfg)[0]
    (g_micro,) = torch.autograd.grad(total, inp.logprob)
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_micro, g_full, rtol=1e-12, atol=1e-14)


def test_aggregation_denominator_counts_only_weighted():
    w = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.25, 0.0, 0.0]])
    assert aggregation_denominator("token_mean", w) == 1.75
    for agg in ("seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        assert aggregation_denominator(agg, w) == 2.0
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_sum"):
        aggregation_denominator("sum", w)


def test_gradients_flow_only_through_unclipped_tokens():
    old = torch.zeros(1, 4)
    ratios = torch.tensor([[1.5, 1.1, 0.5, 0.9]])
    lp = ratios.log().requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])  # clipped high, free, clipped low, free
    inp = LossInputs(lp, old, adv, torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool))
    loss, m = ppo_loss(inp, LossConfig())
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -1.1 / 4, 0.0, 0.9 / 4]]))
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25


def test_kl_estimators_closed_forms():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(7, generator=g), 0)
    q = torch.softmax(torch.randn(7, generator=g), 0)
    kl = (p * (p / q).log()).sum()
    lp, lq = p.log(), q.log()
    # k1 and k3 are unbiased for KL(p || q) on samples of p: their exact expectations equal it
    torch.testing.assert_close((p * KL_ESTIMATORS.get("k1")(lp, lq)).sum(), kl)
    torch.testing.assert_close((p * KL_ESTIMATORS.get("k3")(lp, lq)).sum(), kl)
    torch.testing.assert_close((p * KL_ESTIMATORS.get("k2")(lp, lq)).sum(), 0.5 * (p * (lp - lq) ** 2).sum())
    # pointwise: k3 = r - 1 - log r with r = q / p, >= 0
    r = q / p
    torch.testing.assert_close(KL_ESTIMATORS.get("k3")(lp, lq), r - 1 - r.log())
    assert (KL_ESTIMATORS.get("k3")(lp, lq) >= 0).all() and (KL_ESTIMATORS.get("k2")(lp, lq) >= 0).all()


@pytest.mark.parametrize("est", sorted(KL_ESTIMATORS))
def test_kl_term_added_per_token(est):
    inp = ragged_batch(decay_zero_frac=0.0)
    base, _ = ppo_loss(inp, LossConfig(kl_coef=0.0))
    with_kl, m = ppo_loss(inp, LossConfig(kl_coef=0.3, kl_estimator=est))
    w = inp.token_weight
    kl = (KL_ESTIMATORS.get(est)(inp.logprob, inp.ref_logprob) * w).sum() / w.sum()
    torch.testing.assert_close(with_kl, base + 0.3 * kl)
    assert m["kl_ref"] == pytest.approx(kl.item())
    with pytest.raises(ValueError, match="ref_logprob"):
        inp.ref_logprob = None
        ppo_loss(inp, LossConfig(kl_coef=0.1))


def test_approx_kl_metric_is_weighted_k3_of_old_vs_new():
    inp = ragged_batch()
    _, m = ppo_loss(inp, LossConfig())
    x = (inp.logprob - inp.old_logprob).detach()
    expected = ((x.exp() - 1 - x) * inp.token_weight).sum() / inp.token_weight.sum()
    assert m["approx_kl"] == pytest.approx(expected.item())


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_decay_one_equals_vanilla_grpo(agg):
    inp = ragged_batch(decay_zero_frac=0.0)
    inp.token_weight = inp.token_mask.double()  # decay = 1: every valid token weight 1
    loss, _ = ppo_loss(inp, LossConfig(agg=agg))
    # vanilla GRPO/DAPO: masked mean of the clipped surrogate
    ratio = (inp.logprob - inp.old_logprob).exp()
    tok = torch.maximum(-inp.advantages * ratio, -inp.advantages * ratio.clamp(0.8, 1.2))
    m = inp.token_mask.double()
    if agg == "token_mean":
        vanilla = (tok * m).sum() / m.sum()
    else:
        live = m.sum(1) > 0
        vanilla = ((tok * m).sum(1)[live] / m.sum(1)[live]).mean()
    assert torch.equal(loss, vanilla)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_zero_weight_tokens_are_inert(name):
    inp = ragged_batch()
    zero = inp.token_mask & (torch.rand(inp.token_mask.shape, generator=torch.Generator().manual_seed(3)) < 0.4)
    inp.token_weight = inp.token_weight.masked_fill(zero, 0.0)
    cfg = LossConfig(name=name, kl_coef=0.1)
    loss, _ = POLICY_LOSSES.get(name)(inp, cfg)
    (grad,) = torch.autograd.grad(loss, inp.logprob)
    perturbed = (inp.logprob.detach() + 5.0 * zero).requires_grad_(True)
    inp2 = LossInputs(perturbed, inp.old_logprob, inp.advantages, inp.token_weight, inp.token_mask,
                      inp.ref_logprob, inp.norm_len)
    loss2, _ = POLICY_LOSSES.get(name)(inp2, cfg)
    (grad2,) = torch.autograd.grad(loss2, perturbed)
    assert loss2.item() == loss.item()
    assert torch.equal(grad2, grad) and (grad[zero] == 0).all()
    assert (grad[~inp.token_mask] == 0).all()  # padding: no gradient either


def test_gspo_sequence_ratio_and_gradient():
    inp = ragged_batch()
    inp.old_logprob = (inp.logprob.detach() + 0.02 * torch.randn(inp.logprob.shape)).clone()
    cfg = LossConfig(name="gspo", agg="seq_mean_token_mean", clip_low=0.5, clip_high=0.5)
    loss, m = gspo_loss(inp, cfg)
    (grad,) = torch.autograd.grad(loss, inp.logprob)
    # reference: GSPO's sequence objective -A_i * s_i(theta), averaged over live sequences
    w = inp.token_weight
    live = w.sum(1) > 0
    s = torch.exp((w * (inp.logprob - inp.old_logprob)).sum(1)[live] / w.sum(1)[live])
    ref = (-inp.advantages[live, 0] * s).mean()
    (g_ref,) = torch.autograd.grad(ref, inp.logprob)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, g_ref)
    assert m["clip_frac_low"] == 0.0 and m["clip_frac_high"] == 0.0


def test_gspo_clips_whole_sequences():
    old = torch.zeros(2, 3)
    lp = torch.tensor([[0.3, 0.3, 0.3], [0.01, -0.01, 0.0]], requires_grad=True)  # s = e^0.3, s = 1
    inp = LossInputs(lp, old, torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool))
    loss, m = gspo_loss(inp, LossConfig(name="gspo", clip_low=0.1, clip_high=0.1))
    loss.backward()
    assert (lp.grad[0] == 0).all() and (lp.grad[1] != 0).all()
    assert m["clip_frac_high"] == 0.5
    assert m["ratio_mean"] == pytest.approx((math.exp(0.3) + 1.0) / 2)
    assert loss.item() == pytest.approx(-(1.1 + 1.0) / 2)


def test_unknown_loss_lists_valid():
    with pytest.raises(ValueError, match="ppo, gspo"):
        POLICY_LOSSES.get("cispo")


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_garbage_on_padding_is_harmless(name):
    inp = ragged_batch()
    clean_loss, _ = POLICY_LOSSES.get(name)(inp, LossConfig(name=name, kl_coef=0.1))
    (clean_grad,) = torch.autograd.grad(clean_loss, inp.logprob)
    pad = ~inp.token_mask
    lp = inp.logprob.detach().masked_fill(pad, 80.0).requires_grad_(True)  # exp(80 - old) overflows float32
    dirty = LossInputs(lp, inp.old_logprob.masked_fill(pad, float("-inf")), inp.advantages.masked_fill(pad, float("nan")),
                       inp.token_weight, inp.token_mask, inp.ref_logprob.masked_fill(pad, float("nan")), inp.norm_len)
    loss, metrics = POLICY_LOSSES.get(name)(dirty, LossConfig(name=name, kl_coef=0.1))
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.item() == clean_loss.item()
    assert torch.equal(grad, clean_grad)
    assert all(math.isfinite(v) for v in metrics.values())
