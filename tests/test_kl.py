"""KL to a frozen reference policy: the estimators against a slow per-element loop, the reference held by
the trainer (zero KL before the first update, growing after), the exact gradient a KL coefficient adds,
and a short quickstart run with ``algorithm.loss.kl_coef > 0`` through the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_samples

from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.losses import KL_ESTIMATORS, aggregation_denominator
from rlvr.config import LossConfig, RLConfig, TrainerConfig, load_config
from rlvr.train.batching import pack, pad_responses, plan_micro_batches
from rlvr.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LR, BUDGET = 1e-3, 40


# --------------------------------------------------------------------------- estimators
def _slow_kl(name: str, logp: float, ref: float) -> float:
    """Schulman (2020), one token: r = q/p = exp(ref - logp) on samples of p."""
    log_r = ref - logp
    return {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": (math.exp(log_r) - 1.0) - log_r}[name]


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators_match_a_slow_loop(name):
    g = torch.Generator().manual_seed(0)
    logp = -3.0 * torch.rand(5, 7, generator=g, dtype=torch.float64)
    ref = logp + torch.randn(5, 7, generator=g, dtype=torch.float64)
    ref[0, 0] = logp[0, 0]  # the policy is the reference here: every estimator is 0
    got = KL_ESTIMATORS.get(name)(logp, ref)
    want = torch.tensor([[_slow_kl(name, float(a), float(b)) for a, b in zip(ra, rb)] for ra, rb in zip(logp, ref)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got[0, 0] == 0.0
    if name != "k1":
        assert bool((got >= 0).all())  # k2 and k3 never go negative; k1 does
    # the mean of k1 and k3 over many samples of p estimates KL(p || q): 2-token example in closed form
    p, q = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.tensor([0.4, 0.6], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    estimate = float(KL_ESTIMATORS.get(name)(p.log()[y], q.log()[y]).mean())
    if name != "k2":  # k2 is biased
        assert estimate == pytest.approx(exact, abs=3e-3)


# --------------------------------------------------------------------------- trainer
def _batch(samples):
    plan = plan_micro_batches(samples, 1, BUDGET)[0]
    return plan, [pack(samples, ix) for ix in plan]


def _stats(trainer, samples, plan):
    """The stats pass gathered into ``[N, T]`` tensors: old log-prob, entropy and reference log-prob."""
    _, mask = pad_responses(samples)
    out = [torch.zeros(mask.shape) for _ in range(3)]
    for index, lp, ent, ref in trainer.compute_stats([pack(samples, ix) for ix in plan]):
        for dst, src in zip(out, (lp, ent, ref)):
            dst[torch.tensor(index), : src.shape[1]] = src
    return out


def _fields(samples, old, ref):
    _, mask = pad_responses(samples)
    rewards = torch.tensor([s.reward for s in samples])
    adv_seq, _ = ADVANTAGES.get("grpo")(rewards, 4, 1e-6)
    return {"advantages": adv_seq[:, None] * mask, "token_weight": mask.float(), "old_logprob": old,
            "ref_logprob": ref}


def test_kl_metric_is_zero_at_the_reference_and_grows_after_updates(ckpt):
    samples = random_samples(8, group_size=4)
    plan, _ = _batch(samples)
    _, mask = pad_responses(samples)
    loss_cfg = LossConfig(kl_coef=0.05, kl_estimator="k3")
    trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=BUDGET), reference=True)
    first_ref, kl = None, []
    for _ in range(4):
        old, _, ref = _stats(trainer, samples, plan)
        first_ref = ref if first_ref is None else first_ref
        assert torch.equal(ref, first_ref)  # frozen: never updated
        fields = _fields(samples, old, ref)
        denom = aggregation_denominator("token_mean", fields["token_weight"])
        m = trainer.train_step([[pack(samples, ix).with_fields(**fields) for ix in plan]], loss_cfg, [denom], 16)
        # the training forward sees the pre-update policy: the metric is k3(old, ref)'s token mean
        w = mask.double()
        want = float((KL_ESTIMATORS.get("k3")(old.double(), ref.double()) * w).sum() / w.sum())
        assert m["loss/kl_ref"] == pytest.approx(want, rel=1e-4, abs=1e-12)
        kl.append(m["loss/kl_ref"])
    assert kl[0] == 0.0  # policy == reference, bit for bit, before the first update
    assert all(k > 0 for k in kl[1:]) and kl[3] > kl[1]
    first_old = _stats(Trainer(ckpt, TrainerConfig(micro_batch_tokens=BUDGET), reference=True), samples, plan)[0]
    assert torch.equal(first_ref, first_old)  # the reference is the starting checkpoint


def test_without_a_kl_term_no_reference_is_built(ckpt):
    trainer = Trainer(ckpt, TrainerConfig(micro_batch_tokens=BUDGET))
    samples = random_samples(4, group_size=4)
    assert trainer.reference is None
    assert all(len(row) == 3 for row in trainer.compute_stats(_batch(samples)[1]))  # no reference pass
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    with_ref = Trainer(ckpt, TrainerConfig(micro_batch_tokens=BUDGET), reference=True)
    assert sum(p.numel() for g in with_ref.optimizer.param_groups for p in g["params"]) == n_params  # no optimizer
    assert not any(p.requires_grad for p in with_ref.reference.parameters())


def _grad(trainer, mbs, loss_cfg, denom):
    for mb in mbs:
        loss, _, _ = trainer.forward_loss(mb, loss_cfg, denom, 16)
        trainer.backward(loss)
    return _take_grad(trainer)


def _take_grad(trainer):
    grads = {k: p.grad.clone() for k, p in trainer.policy.named_parameters() if p.grad is not None}
    trainer.optimizer.zero_grad(set_to_none=True)
    return grads


DKL = {  # d estimator / d logprob, by hand
    "k1": lambda lp, ref: torch.ones_like(lp),
    "k2": lambda lp, ref: lp - ref,
    "k3": lambda lp, ref: 1.0 - torch.exp(ref - lp),
}


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_coef_adds_exactly_its_coefficient_times_the_kl_gradient(ckpt, estimator):
    """grad(loss, kl_coef=c) - grad(loss, kl_coef=0) = c * grad(KL), with grad(KL) in closed form:
    sum_t w_t dk/dlogp_t * grad logp_t / denom (the reference is moved off the policy so it is not 0)."""
    samples = random_samples(8, group_size=4)
    plan, _ = _batch(samples)
    trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=BUDGET), reference=True)
    old, _, ref = _stats(trainer, samples, plan)
    ref = ref + 0.3 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    fields = _fields(samples, old, ref)
    denom = aggregation_denominator("token_mean", fields["token_weight"])
    mbs = [pack(samples, ix).with_fields(**fields) for ix in plan]
    c = 0.25
    g0 = _grad(trainer, mbs, LossConfig(kl_coef=0.0, kl_estimator=estimator), denom)
    g1 = _grad(trainer, mbs, LossConfig(kl_coef=c, kl_estimator=estimator), denom)
    for mb in mbs:  # the closed form, through the same forward
        lp, _ = trainer._forward(mb)
        f = mb.fields
        dk = DKL[estimator](lp.detach(), f["ref_logprob"]) * mb.token_mask
        (f["token_weight"] * dk * lp).sum().div(denom).backward()
    g_kl = _take_grad(trainer)
    assert max(float(g.abs().max()) for g in g_kl.values()) > 1e-4  # a real gradient
    for k in g0:
        torch.testing.assert_close(g1[k] - g0[k], c * g_kl[k], rtol=1e-4, atol=1e-7)


def test_a_kl_term_takes_the_stats_pass_and_loads():
    from rlvr.config import AlgorithmConfig, CreditConfig
    from rlvr.loop.step import needs_policy_stats

    off = {"entropy_adv_scale": 0.0}
    algo = AlgorithmConfig(credit=CreditConfig(criterion="position"), loss=LossConfig(kl_coef=0.01))
    assert needs_policy_stats(RLConfig(algorithm=algo), off)
    assert not needs_policy_stats(RLConfig(algorithm=AlgorithmConfig(credit=CreditConfig(criterion="position"))), off)
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml")], ["algorithm.loss.kl_coef=0.01"])
    assert cfg.algorithm.loss.kl_coef == 0.01


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_quickstart_with_a_kl_term_logs_zero_then_positive_kl(tmp_path):
    from rlvr.loop.metrics import merge_steps, read_metrics

    steps = 3
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml", "algorithm.loss.kl_coef=0.01",
           f"logging.run_dir={tmp_path}", f"schedule.total_steps={steps}", "logging.progress=false"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    rows = {r["step"]: r for r in merge_steps(read_metrics(os.path.join(tmp_path, "metrics.jsonl")))}
    assert rows[1]["loss/kl_ref"] == 0.0
    assert all(rows[s]["loss/kl_ref"] > 0 for s in range(2, steps + 1))
    assert "kl_ref=0.0000" in out.stdout
