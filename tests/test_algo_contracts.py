"""Contracts of every plug-in point of rlvr.algo, run by name on small fake inputs.

Each registry's keys equal the names the config schema accepts, so a name the
config validates always resolves, and every registered function returns the
documented types.  Also the closed form of the entropy-shaped advantage.
"""

import subprocess
import sys

import pytest
import torch

from rlvr import config
from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.credit import CREDIT_CRITERIA, CreditInputs, compute_token_weight
from rlvr.algo.entropy_adv import shape_advantages
from rlvr.algo.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, LossInputs
from rlvr.algo.schedules import SCHEDULES, schedule_value

N, T, GROUP = 4, 6, 2


@pytest.mark.parametrize("registry, names", [
    (ADVANTAGES, config.ADVANTAGES),
    (POLICY_LOSSES, config.POLICY_LOSSES),
    (AGGREGATIONS, config.LOSS_AGGS),
    (KL_ESTIMATORS, config.KL_ESTIMATORS),
    (CREDIT_CRITERIA, config.CREDIT_CRITERIA),
    (SCHEDULES, config.SCHEDULE_KINDS),
])
def test_registry_keys_equal_config_names(registry, names):
    assert set(registry) == set(names)


def fake_batch():
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(T)[None, :] < torch.tensor([6, 3, 1, 5])[:, None]
    old = -torch.rand(N, T, generator=g)
    return mask, old, (old + 0.1 * torch.randn(N, T, generator=g)).requires_grad_(True)


@pytest.mark.parametrize("name", config.ADVANTAGES)
def test_advantage_contract(name):
    adv, metrics = ADVANTAGES.get(name)(torch.tensor([1.0, 0.0, 0.5, 0.5]), GROUP, 1e-6)
    assert isinstance(adv, torch.Tensor) and adv.shape == (4,) and adv.dtype == torch.float32
    assert torch.isfinite(adv).all()
    assert isinstance(metrics["zero_variance_group_frac"], float) and metrics["zero_variance_group_frac"] == 0.5


@pytest.mark.parametrize("name", config.POLICY_LOSSES)
@pytest.mark.parametrize("agg", config.LOSS_AGGS)
@pytest.mark.parametrize("kl", config.KL_ESTIMATORS)
def test_policy_loss_contract(name, agg, kl):
    mask, old, lp = fake_batch()
    inp = LossInputs(lp, old, torch.ones(N, T), mask.float(), mask, ref_logprob=old, norm_len=T)
    cfg = config.LossConfig(name=name, agg=agg, kl_coef=0.1, kl_estimator=kl, dual_clip=3.0)
    loss, metrics = POLICY_LOSSES.get(name)(inp, cfg)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad
    loss.backward()
    assert lp.grad is not None and torch.isfinite(lp.grad).all()
    assert set(metrics) >= {"clip_frac_low", "clip_frac_high", "ratio_mean", "approx_kl", "kl_ref"}
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("name", config.KL_ESTIMATORS)
def test_kl_contract(name):
    _, old, lp = fake_batch()
    kl = KL_ESTIMATORS.get(name)(lp, old)
    assert kl.shape == (N, T) and kl.requires_grad
    assert torch.equal(KL_ESTIMATORS.get(name)(old, old), torch.zeros(N, T))  # KL of a policy to itself


@pytest.mark.parametrize("name", config.CREDIT_CRITERIA)
@pytest.mark.parametrize("scope", config.CREDIT_SCOPES)
def test_credit_contract(name, scope):
    mask, old, _ = fake_batch()
    inp = CreditInputs(mask, entropy=torch.rand(N, T), logprob=old, advantages=torch.randn(N, T))
    assert CREDIT_CRITERIA.get(name)(inp).shape == (N, T)
    weight, targeted, metrics = compute_token_weight(name, inp, 0.5, 0.2, scope, GROUP)
    assert weight.dtype == torch.float32 and weight.shape == (N, T)
    assert targeted.dtype == torch.bool and targeted.shape == (N, T)
    assert set(metrics) == {"targeted_frac", "token_weight_mean"}
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("kind", config.SCHEDULE_KINDS)
def test_schedule_contract(kind):
    cfg = config.ScheduleConfig(kind=kind, magnitude=0.99, end=0.0, end_ratio=0.8)
    values = [schedule_value(cfg, s, 10) for s in range(11)]
    assert all(isinstance(v, float) and 0.0 <= v <= 0.99 + 1e-12 for v in values)
    # gamma is the authors' (m * (1 - progress))^gamma: it starts at m^gamma (rlvr/algo/schedules.py)
    assert values[0] == pytest.approx(0.99 ** cfg.gamma if kind == "gamma" else 0.99)


def test_shape_advantages_closed_form():
    adv = torch.tensor([[1.0, 1.0, -0.5, 0.0]])
    ent = torch.tensor([[0.5, 3.0, 2.0, 1.0]])
    # psi = min(0.4 H, |A| / 2) = [0.2, 0.5, 0.25, 0]
    out = shape_advantages(adv, ent, scale=2.0, alpha=0.4, kappa=2.0)
    torch.testing.assert_close(out, torch.tensor([[1.4, 2.0, 0.0, 0.0]]))
    assert torch.equal(shape_advantages(adv, ent, scale=0.0), adv)


def test_shape_advantages_detaches_entropy():
    adv = torch.tensor([[1.0, -2.0]], requires_grad=True)
    ent = torch.tensor([[0.5, 0.1]], requires_grad=True)
    shape_advantages(adv, ent, scale=1.0).sum().backward()
    assert ent.grad is None
    assert adv.grad is not None


def test_algo_imports_no_distributed_stack():
    code = ("import sys, rlvr.algo.advantages, rlvr.algo.losses, rlvr.algo.credit, "
            "rlvr.algo.entropy_adv, rlvr.algo.token_stats, rlvr.algo.schedules\n"
            "bad = [m for m in ('ray', 'vllm') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_algo_sources_name_no_distributed_stack():
    import pathlib

    import rlvr.algo

    for path in pathlib.Path(rlvr.algo.__file__).parent.glob("*.py"):
        code = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        for line in code:
            assert not any(bad in line for bad in ("torch.distributed", "ray", "vllm")), (path.name, line)
