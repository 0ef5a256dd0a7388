"""Chunked log-prob/entropy vs naive log_softmax autograd: values, gradients, temperature."""

import math

import pytest
import torch

from rlvr.algo.token_stats import hidden_logprob_entropy, logits_logprob_entropy


def naive(logits, targets, temperature=1.0):
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    return logp.gather(1, targets[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def random_case(n=37, d=16, v=53, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype)
    weight = torch.randn(v, d, generator=g, dtype=dtype) / math.sqrt(d) * 3
    targets = torch.randint(0, v, (n,), generator=g)
    c_lp, c_h = torch.randn(n, generator=g, dtype=dtype), torch.randn(n, generator=g, dtype=dtype)
    return hidden, weight, targets, c_lp, c_h


def test_uniform_logits_entropy_is_log_v():
    for v in (2, 7, 1000):
        lp, h = logits_logprob_entropy(torch.zeros(5, v), torch.zeros(5, dtype=torch.long), chunk=2)
        torch.testing.assert_close(h, torch.full((5,), math.log(v)), rtol=1e-6, atol=0)
        torch.testing.assert_close(lp, torch.full((5,), -math.log(v)), rtol=1e-6, atol=0)
        lp, h = hidden_logprob_entropy(torch.zeros(5, 3), torch.randn(v, 3), torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(h, torch.full((5,), math.log(v)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("chunk", [1, 5, 8, 36, 37, 1024])  # 37 rows: most chunks don't divide N
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logits_version_matches_naive(chunk, temperature):
    hidden, weight, targets, c_lp, c_h = random_case()
    logits = (hidden @ weight.T).requires_grad_(True)
    lp, h = logits_logprob_entropy(logits, targets, chunk=chunk, temperature=temperature)
    (g,) = torch.autograd.grad((c_lp * lp + c_h * h).sum(), logits)
    logits_ref = logits.detach().clone().requires_grad_(True)
    lp_ref, h_ref = naive(logits_ref, targets, temperature)
    (g_ref,) = torch.autograd.grad((c_lp * lp_ref + c_h * h_ref).sum(), logits_ref)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 8, 37, 1024])
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_fused_head_matches_naive(chunk, temperature):
    hidden, weight, targets, c_lp, c_h = random_case()
    hidden.requires_grad_(True), weight.requires_grad_(True)
    lp, h = hidden_logprob_entropy(hidden, weight, targets, chunk=chunk, temperature=temperature)
    gh, gw = torch.autograd.grad((c_lp * lp + c_h * h).sum(), (hidden, weight))
    lp_ref, h_ref = naive(hidden @ weight.T, targets, temperature)
    gh_ref, gw_ref = torch.autograd.grad((c_lp * lp_ref + c_h * h_ref).sum(), (hidden, weight))
    torch.testing.assert_close(lp, lp_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", ["logits", "hidden"])
def test_gradcheck_float64(fn):
    hidden, weight, targets, c_lp, c_h = random_case(n=7, d=4, v=9)
    hidden.requires_grad_(True), weight.requires_grad_(True)

    def f(h, w):
        if fn == "logits":
            lp, ent = logits_logprob_entropy(h @ w.T, targets, chunk=3, temperature=0.9)
        else:
            lp, ent = hidden_logprob_entropy(h, w, targets, chunk=3, temperature=0.9)
        return (c_lp * lp + c_h * ent).sum()

    assert torch.autograd.gradcheck(f, (hidden, weight))


def test_temperature_scales_logits():
    hidden, weight, targets, _, _ = random_case(dtype=torch.float32)
    logits = hidden @ weight.T
    lp_t, h_t = logits_logprob_entropy(logits, targets, temperature=2.0)
    lp_2, h_2 = logits_logprob_entropy(logits / 2.0, targets)
    torch.testing.assert_close(lp_t, lp_2)
    torch.testing.assert_close(h_t, h_2)
    # hotter sampling is flatter: higher entropy than at temperature 1
    _, h_1 = logits_logprob_entropy(logits, targets)
    assert (h_t > h_1).all()


def test_bf16_inputs_use_fp32_softmax():
    hidden, weight, targets, c_lp, c_h = random_case(dtype=torch.float32)
    hb = hidden.bfloat16().requires_grad_(True)
    wb = weight.bfloat16().requires_grad_(True)
    lp, h = hidden_logprob_entropy(hb, wb, targets, chunk=8)
    assert lp.dtype == torch.float32 and h.dtype == torch.float32
    # reference: the same bf16 logits, softmax in fp32
    lp_ref, h_ref = naive((hb.detach() @ wb.detach().T).float(), targets)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    gh, gw = torch.autograd.grad((c_lp.float() * lp + c_h.float() * h).sum(), (hb, wb))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert torch.isfinite(gh.float()).all() and torch.isfinite(gw.float()).all()


def test_frozen_weight_gets_no_gradient():
    hidden, weight, targets, _, _ = random_case()
    hidden.requires_grad_(True)
    lp, _ = hidden_logprob_entropy(hidden, weight, targets, chunk=10)
    lp.sum().backward()
    assert weight.grad is None and hidden.grad is not None


def test_masked_vocab_entries_stay_finite():
    logits = torch.randn(4, 6)
    logits[:, 4:] = float("-inf")  # e.g. padded vocabulary ids
    logits.requires_grad_(True)
    targets = torch.tensor([0, 1, 2, 3])
    lp, h = logits_logprob_entropy(logits, targets, chunk=3)
    lp_ref, h_ref = naive(logits[:, :4], targets)
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(h, h_ref)
    (lp + h).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 4:] == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="targets"):
        logits_logprob_entropy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logits_logprob_entropy(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="dim"):
        hidden_logprob_entropy(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("fn", ["logits", "hidden"])
def test_float32_matches_naive(fn):
    hidden, weight, targets, c_lp, c_h = random_case(n=50, v=301, dtype=torch.float32)
    hidden.requires_grad_(True), weight.requires_grad_(True)
    if fn == "logits":
        lp, h = logits_logprob_entropy(hidden @ weight.T, targets, chunk=16)
    else:
        lp, h = hidden_logprob_entropy(hidden, weight, targets, chunk=16)
    grads = torch.autograd.grad((c_lp * lp + c_h * h).sum(), (hidden, weight))
    lp_ref, h_ref = naive(hidden @ weight.T, targets)
    grads_ref = torch.autograd.grad((c_lp * lp_ref + c_h * h_ref).sum(), (hidden, weight))
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(h, h_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_fused_head_saves_no_logits_for_backward():
    n, d, v = 64, 8, 4096
    hidden, weight, targets, _, _ = random_case(n=n, d=d, v=v, dtype=torch.float32)
    hidden.requires_grad_(True), weight.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden_logprob_entropy(hidden, weight, targets, chunk=16)
    assert max(saved) == v * d  # the weight itself; nothing of size n * v
    assert sum(saved) == n * d + v * d + 3 * n  # hidden, weight, targets, logsumexp, entropy
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        torch.log_softmax(hidden @ weight.T, -1)
    assert max(saved) == n * v  # the naive path keeps the full logits
