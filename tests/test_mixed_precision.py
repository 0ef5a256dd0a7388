"""``trainer.dtype=bfloat16``: bf16 compute, fp32 master weights, and a run that tracks fp32.

Both paths are checked: unsharded (``mesh=None``: autocast, see :mod:`rlvr.train.parallel`)
and FSDP2 with ``MixedPrecisionPolicy`` on a 1-rank gloo group in this process.

Setup: the tiny checkpoint, 16 random ragged samples, fixed advantages and fixed
``old_logprob`` (from the fp32 initial model), 20 AdamW steps at lr 1e-4 on that
one batch -- PPO over several epochs of a batch, so the ratios move and start to
clip; the loss falls from -0.13 to -0.25.

Tolerances, with the values measured when they were set:

* loss at every step within 2e-3 absolute of the fp32 run (measured <= 2.6e-4);
* final parameters: relative L2 error of the *update*,
  ``|delta_bf16 - delta_fp32| / |delta_fp32|`` with ``delta = theta_20 - theta_0``,
  at most 0.1 (measured 0.027 autocast, 0.036 FSDP2).  The update, not the
  parameters: ``|theta|`` is dominated by the random init, so ``|theta_bf16 -
  theta_fp32| / |theta|`` is ~5e-4 while *not training at all* scores only
  ~2e-2 on it: the update is hidden in the init.  Adam makes per-entry updates sign-like (lr * m / sqrt(v)), so entries
  whose gradient is near 0 can flip under bf16 round-off; an L2 over all entries
  weighs them by size instead of failing on the few that flip.  A negative
  control checks the metric can fail: fp32 at 1.5x the learning rate is 0.35 away.
* per-token log-probs of the initial model in bf16: off fp32 by more than 1e-4 (not a
  no-op) and less than 0.1 (measured 2.4e-3 autocast, 2.9e-3 FSDP2).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from helpers import random_samples
from rlvr.train.batching import build_micro_batch, pad_responses, plan_micro_batches
from rlvr.config import LossConfig, TrainerConfig
from rlvr.train.trainer import Trainer

LR, STEPS, BUDGET = 1e-4, 20, 48
LOSS_TOL, DELTA_TOL = 2e-3, 0.1


@pytest.fixture(scope="module")
def batch():
    samples = random_samples(16, seed=5)
    _, mask = pad_responses(samples)
    g = torch.Generator().manual_seed(0)
    adv = (torch.randn(len(samples), 1, generator=g) * mask).contiguous()
    return samples, plan_micro_batches(samples, 1, BUDGET)[0], {"advantages": adv, "token_weight": mask.float()}


@pytest.fixture(scope="module")
def one_rank_mesh():
    """FSDP2 needs a process group: a 1-rank gloo group in this process (torn down after the module)."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("dp",))
    finally:
        dist.destroy_process_group()


def _logprob(trainer, batch) -> torch.Tensor:
    samples, plan, fields = batch
    out = torch.zeros(fields["token_weight"].shape)
    for index, lp, _ in trainer.compute_stats([build_micro_batch(samples, ix) for ix in plan]):
        out[torch.tensor(index), : lp.shape[1]] = lp
    return out


def _run(ckpt, batch, old_logprob, dtype, mesh=None, lr=LR):
    """20 optimizer steps on one batch: (loss per step, flattened update theta_20 - theta_0, trainer)."""
    samples, plan, fields = batch
    trainer = Trainer(ckpt, TrainerConfig(lr=lr, micro_batch_tokens=BUDGET, dtype=dtype), mesh=mesh)
    theta0 = {k: v.clone() for k, v in trainer.full_state_dict().items()}  # unsharded: views of the live params
    fields = {**fields, "old_logprob": old_logprob}
    denom = float(fields["token_weight"].sum())
    losses = []
    for _ in range(STEPS):
        mbs = [build_micro_batch(samples, ix).with_fields(**fields) for ix in plan]
        losses.append(trainer.train_step([mbs], LossConfig(), [denom], 16)["train/loss"])
    theta = trainer.full_state_dict()
    return losses, torch.cat([(theta[k] - theta0[k]).flatten() for k in sorted(theta)]), trainer


@pytest.fixture(scope="module")
def fp32_run(ckpt, batch):
    old = _logprob(Trainer(ckpt, TrainerConfig()), batch)
    return old, _run(ckpt, batch, old, "float32")


def _rel_l2(delta, ref):
    return float((delta - ref).norm() / ref.norm())


@pytest.fixture(scope="module", params=["autocast", "fsdp2"])
def bf16_run(request, ckpt, batch, fp32_run):
    mesh = request.getfixturevalue("one_rank_mesh") if request.param == "fsdp2" else None
    old, _ = fp32_run
    return _run(ckpt, batch, old, "bfloat16", mesh=mesh)


def test_bf16_tracks_fp32_over_20_steps(fp32_run, bf16_run):
    _, (ref_losses, ref_delta, _) = fp32_run
    losses, delta, _ = bf16_run
    assert ref_losses[-1] < ref_losses[0] - 0.1  # the run really trains
    worst = max(abs(a - b) for a, b in zip(losses, ref_losses))
    assert worst <= LOSS_TOL, worst
    assert _rel_l2(delta, ref_delta) <= DELTA_TOL, _rel_l2(delta, ref_delta)
    assert _rel_l2(delta, ref_delta) > 1e-3  # bf16 really was in effect: not bit-equal to fp32


def test_delta_metric_rejects_a_different_learning_rate(ckpt, batch, fp32_run):
    old, (_, ref_delta, _) = fp32_run
    _, delta, _ = _run(ckpt, batch, old, "float32", lr=1.5 * LR)
    assert _rel_l2(delta, ref_delta) > 2 * DELTA_TOL


def test_master_weights_gradients_and_adam_state_stay_fp32(bf16_run, batch):
    samples, plan, fields = batch
    _, _, trainer = bf16_run
    for p in trainer.policy.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2: the fp32 shard is the master copy
        assert local.dtype == torch.float32
    mb = build_micro_batch(samples, plan[0]).with_fields(**fields, old_logprob=torch.zeros_like(fields["advantages"]))
    trainer.policy.train()
    loss, *_ = trainer.forward_loss(mb, LossConfig(), 1.0, 16)
    trainer.backward(loss)
    grads = [p.grad for p in trainer.policy.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    trainer.optimizer.zero_grad(set_to_none=True)
    state = [v for s in trainer.optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert state and all(v.dtype == torch.float32 for v in state)


def test_bf16_changes_the_log_probs_by_bf16_round_off(ckpt, batch, fp32_run, one_rank_mesh):
    """The option is not a no-op on either path, and the error is round-off sized (bf16 eps = 2^-8)."""
    old, _ = fp32_run
    mask = batch[2]["token_weight"].bool()
    for mesh in (None, one_rank_mesh):
        lp = _logprob(Trainer(ckpt, TrainerConfig(dtype="bfloat16"), mesh=mesh), batch)
        err = float((lp - old)[mask].abs().max())
        assert 1e-4 < err < 0.1, (mesh, err)
