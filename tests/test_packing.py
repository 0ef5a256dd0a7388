"""Packed vs padded micro-batches, the token budget, and activation checkpointing.

The packed layout is only right if transformers really builds a block-diagonal
causal mask from position ids that restart at 0; the padded layout is the plain
reference (one row per sequence, attention mask).  Both must give the same
per-token log-probs and entropies as running each sequence alone, and the same
loss and accumulated gradients although the token budget splits them into
different micro-batches.

Tolerances (float32): log-probs and entropies 1e-5 absolute (measured ~5e-7:
only the summation order of the attention and matmul kernels differs); the
summed loss 1e-6 absolute; gradients 1e-5 of each tensor's largest entry
(measured ~6e-7).  Activation checkpointing recomputes the same ops in the same
order on CPU, so its gradients must be bit-identical.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist

from helpers import random_samples
from rlvr.train.batching import build_micro_batch, micro_batch_tokens, pack, pad, pad_responses, plan_micro_batches
from rlvr.config import LossConfig, TrainerConfig
from rlvr.train.trainer import Trainer

STAT_TOL, LOSS_TOL, GRAD_RTOL = 1e-5, 1e-6, 1e-5


@pytest.fixture(scope="module")
def samples():
    return random_samples(12, seed=3)


def _trainer(ckpt, packing=True, **kw) -> Trainer:
    return Trainer(ckpt, TrainerConfig(lr=1e-3, micro_batch_tokens=32, packing=packing, **kw))


def _micro_batches(samples, packing, budget=32):
    return [build_micro_batch(samples, ix, packing) for ix in plan_micro_batches(samples, 1, budget, packing=packing)[0]]


def _stats(trainer, samples, packing):
    """``[N, T]`` log-prob and entropy of every response token, assembled from the micro-batches."""
    _, mask = pad_responses(samples)
    logprob, entropy = torch.zeros(mask.shape), torch.zeros(mask.shape)
    for index, lp, ent in trainer.compute_stats(_micro_batches(samples, packing)):
        logprob[torch.tensor(index), : lp.shape[1]], entropy[torch.tensor(index), : ent.shape[1]] = lp, ent
    return logprob, entropy


def _fields(samples, old_logprob):
    """Random per-sequence advantages; old log-probs nudged off the current ones so some ratios clip."""
    _, mask = pad_responses(samples)
    g = torch.Generator().manual_seed(0)
    adv = (torch.randn(len(samples), 1, generator=g) * mask).contiguous()
    old = (old_logprob + 0.1 * torch.randn(mask.shape, generator=g)) * mask
    return {"old_logprob": old, "advantages": adv, "token_weight": mask.float()}


def _loss_and_grads(trainer, samples, packing, fields):
    """Accumulate forward/backward over the planned micro-batches, as ``train_step`` does, without stepping."""
    trainer.policy.train()
    denom = float(fields["token_weight"].sum())
    total = 0.0
    for mb in _micro_batches(samples, packing):
        loss, *_ = trainer.forward_loss(mb.with_fields(**fields), LossConfig(), denom, 16)
        trainer.backward(loss)
        total += float(loss.detach())
    return total, {n: p.grad.clone() for n, p in trainer.policy.named_parameters()}


def _assert_grads_close(ref, other, rtol=GRAD_RTOL):
    assert set(ref) == set(other)
    for name, g in ref.items():
        assert g.abs().max() > 0, name  # every parameter gets a gradient
        err = float((g - other[name]).abs().max() / g.abs().max())
        assert err <= rtol, (name, err)


def _alone(ckpt, samples):
    """Reference: each sequence alone through the plain HF model, full logits, ``log_softmax``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    _, mask = pad_responses(samples)
    logprob, entropy = torch.zeros(mask.shape), torch.zeros(mask.shape)
    with torch.no_grad():
        for i, s in enumerate(samples):
            seq = torch.tensor([s.prompt_ids + s.response_ids])
            logp = model(seq).logits[0, len(s.prompt_ids) - 1: -1].log_softmax(-1)
            logprob[i, : len(s.response_ids)] = logp.gather(1, seq[0, len(s.prompt_ids):, None])[:, 0]
            entropy[i, : len(s.response_ids)] = -(logp.exp() * logp).sum(-1)
    return logprob, entropy


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_padded_match_each_sequence_alone(ckpt, samples, attn):
    ref_lp, ref_ent = _alone(ckpt, samples)
    for packing in (True, False):
        lp, ent = _stats(_trainer(ckpt, packing, attn_implementation=attn), samples, packing)
        assert float((lp - ref_lp).abs().max()) <= STAT_TOL, (packing, attn)
        assert float((ent - ref_ent).abs().max()) <= STAT_TOL, (packing, attn)
    assert float(ref_ent.max()) > 1.0  # a non-degenerate model: entropies are far from 0


def test_packed_row_without_restarting_positions_leaks(ckpt, samples):
    """Negative control: the 1e-5 comparison above can fail.  Positions that run on across
    sequences make transformers use one causal mask over the whole row, so later sequences attend
    to earlier ones and their log-probs move by ~0.2."""
    ref_lp, _ = _alone(ckpt, samples)
    mb = pack(samples, [0, 1, 2, 3])
    leaky = replace(mb, position_ids=torch.arange(mb.num_tokens)[None])
    (_, lp, _), = _trainer(ckpt).compute_stats([leaky])
    assert float((lp[0] - ref_lp[0, : lp.shape[1]]).abs().max()) <= STAT_TOL  # the first sequence is unaffected
    assert float((lp - ref_lp[:4, : lp.shape[1]]).abs().max()) > 1e-2


def test_packed_and_padded_give_same_loss_and_gradients(ckpt, samples):
    packed, padded = _trainer(ckpt, True), _trainer(ckpt, False)
    fields = _fields(samples, _stats(packed, samples, True)[0])
    # the padded layout charges n * T_max against the budget, so it is split differently
    assert len(_micro_batches(samples, False)) > len(_micro_batches(samples, True)) >= 2
    loss_packed, g_packed = _loss_and_grads(packed, samples, True, fields)
    loss_padded, g_padded = _loss_and_grads(padded, samples, False, fields)
    assert abs(loss_packed) > 1e-3
    assert loss_padded == pytest.approx(loss_packed, abs=LOSS_TOL)
    _assert_grads_close(g_packed, g_padded)


def test_entropy_gradients_match(ckpt, samples):
    """The entropy path of the fused head (token credit, entropy shaping) through both layouts."""
    grads = []
    for packing in (True, False):
        trainer = _trainer(ckpt, packing)
        for mb in _micro_batches(samples, packing):
            _, entropy = trainer._forward(mb)
            (entropy.sum() / 100).backward()
        grads.append({n: p.grad.clone() for n, p in trainer.policy.named_parameters()})
    _assert_grads_close(*grads)


@pytest.mark.parametrize("packing", [True, False])
def test_activation_checkpointing_gives_identical_gradients(ckpt, samples, packing):
    plain, ckpted = _trainer(ckpt, packing), _trainer(ckpt, packing, activation_checkpointing=True)
    fields = _fields(samples, _stats(plain, samples, packing)[0])
    calls = []
    # a pre-hook: checkpoint's recompute stops early, once the last saved tensor is rebuilt, so a block's
    # forward (post-)hook would not fire again
    ckpted.policy.hf.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    loss0, g0 = _loss_and_grads(plain, samples, packing, fields)
    loss1, g1 = _loss_and_grads(ckpted, samples, packing, fields)
    n_micro = len(_micro_batches(samples, packing))
    assert len(calls) == 2 * n_micro  # really recomputed: every block runs again in backward
    assert loss1 == loss0
    assert all(torch.equal(g0[k], g1[k]) for k in g0)


def test_activation_checkpointing_under_fsdp2_gives_identical_gradients(ckpt, samples):
    """Checkpointing is applied before ``fully_shard``; on a 1-rank gloo group the sharded gradients match."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("dp",))
        plain = Trainer(ckpt, TrainerConfig(micro_batch_tokens=32), mesh=mesh)
        ckpted = Trainer(ckpt, TrainerConfig(micro_batch_tokens=32, activation_checkpointing=True), mesh=mesh)
        fields = _fields(samples, _stats(plain, samples, True)[0])
        loss0, g0 = _loss_and_grads(plain, samples, True, fields)
        loss1, g1 = _loss_and_grads(ckpted, samples, True, fields)
    finally:
        dist.destroy_process_group()
    assert loss1 == loss0
    assert all(torch.equal(g0[k].full_tensor(), g1[k].full_tensor()) for k in g0)


def test_layouts_hold_the_same_tokens(samples):
    index = [0, 3, 5, 7]
    packed, padded = pack(samples, index), pad(samples, index)
    lengths = [samples[i].num_tokens - 1 for i in index]
    assert packed.packed and not padded.packed
    assert packed.input_ids.shape == (1, sum(lengths))
    assert padded.input_ids.shape == (4, max(lengths))
    assert padded.attention_mask.sum(1).tolist() == lengths
    # the gathered targets are the response tokens in both layouts
    for mb in (packed, padded):
        got = mb.targets[mb.gather_index] * mb.token_mask
        want, _ = pad_responses([samples[i] for i in index])
        assert torch.equal(got, want[:, : got.shape[1]])
    assert torch.equal(packed.token_mask, padded.token_mask)


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("budget", [12, 25, 40, 100])
@pytest.mark.parametrize("ranks", [1, 2])
def test_token_budget_counts_computed_tokens(packing, budget, ranks):
    samples = random_samples(24, seed=7)
    plan = plan_micro_batches(samples, ranks, budget, packing=packing)
    assert len({len(p) for p in plan}) == 1  # every rank runs the same number of micro-batches
    seen = sorted(i for rank in plan for mb in rank for i in mb)
    assert seen == list(range(len(samples)))
    for rank in plan:
        for index in rank:
            mb = build_micro_batch(samples, index, packing)
            assert mb.num_tokens == micro_batch_tokens([samples[i].num_tokens - 1 for i in index], packing)
            # over budget only when a single sequence is itself longer than the budget
            assert mb.num_tokens <= budget or len(index) == 1, (index, mb.num_tokens)


def test_padding_is_charged_to_the_budget():
    """Lengths 10 and 2 fit a 12-token budget packed (12) but not padded (2 x 10 = 20)."""
    samples = random_samples(2, seed=0)
    samples[0].prompt_ids, samples[0].response_ids = [2] * 5, [3] * 6
    samples[1].prompt_ids, samples[1].response_ids = [2] * 2, [3] * 1
    assert plan_micro_batches(samples, 1, 12, packing=True) == [[[0, 1]]]
    assert plan_micro_batches(samples, 1, 12, packing=False) == [[[0], [1]]]


def test_layout_must_match_the_config(ckpt, samples):
    with pytest.raises(ValueError, match="trainer.packing=False"):
        _trainer(ckpt, packing=False).compute_stats([pack(samples, [0, 1])])


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attention_without_flash_attn_fails_clearly(ckpt):
    with pytest.raises(ImportError, match="flash-attn.*attn_implementation=sdpa"):
        _trainer(ckpt, attn_implementation="flash_attention_2", dtype="bfloat16")
