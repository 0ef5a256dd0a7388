"""The algorithm-blind trainer: credit decay=1 is vanilla GRPO, and FSDP2 over 2 Ray actors
matches one unsharded process (same loss, same updated parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import random_samples
from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.losses import aggregation_denominator
from rlvr.train.batching import pack, pad_responses, plan_micro_batches
from rlvr.config import AlgorithmConfig, CreditConfig, LossConfig, TrainerConfig
from rlvr.loop.step import assign_credit
from rlvr.train.trainer import Trainer

LR = 1e-3


def _fields(trainer_or_stats, samples, algo: AlgorithmConfig, values):
    _, mask = pad_responses(samples)
    old = torch.zeros(mask.shape)
    ent = torch.zeros(mask.shape)
    for index, lp, e in trainer_or_stats:
        old[torch.tensor(index), : lp.shape[1]] = lp
        ent[torch.tensor(index), : e.shape[1]] = e
    rewards = torch.tensor([s.reward for s in samples])
    adv_seq, _ = ADVANTAGES.get(algo.advantage)(rewards, algo.group_size, algo.advantage_eps)
    adv, weight, _, _ = assign_credit(algo, values, adv_seq, mask, old, ent)
    return {"old_logprob": old, "advantages": adv, "token_weight": weight}


def _train(ckpt, samples, algo, values, world=1, rank=None, budget=40):
    trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=budget))
    plan = plan_micro_batches(samples, 1, budget)[0]
    fields = _fields(trainer.compute_stats([pack(samples, ix) for ix in plan]), samples, algo, values)
    denom = aggregation_denominator(algo.loss.agg, fields["token_weight"])
    metrics = trainer.train_step([[pack(samples, ix).with_fields(**fields) for ix in plan]], algo.loss, [denom], 16)
    return metrics, trainer.full_state_dict()


def test_decay_one_is_vanilla_grpo(ckpt):
    samples = random_samples(8, group_size=4)
    values = {"percentile": 0.7, "decay": 1.0, "entropy_adv_scale": 0.0}
    vanilla = AlgorithmConfig(group_size=4, credit=CreditConfig(criterion="none"))
    m0, sd0 = _train(ckpt, samples, vanilla, values)
    for criterion in ("position", "entropy"):
        algo = AlgorithmConfig(group_size=4, credit=CreditConfig(criterion=criterion))
        m1, sd1 = _train(ckpt, samples, algo, values)
        assert m1["train/loss"] == m0["train/loss"]
        assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    # and a hard mask (decay=0) at the same percentile really changes the update
    algo = AlgorithmConfig(group_size=4, credit=CreditConfig(criterion="position"))
    m2, sd2 = _train(ckpt, samples, algo, {**values, "decay": 0.0})
    assert any(not torch.equal(sd0[k], sd2[k]) for k in sd0)


@pytest.mark.slow
def test_fsdp_two_actors_match_one_process(ckpt):
    """Tolerance: loss and grad norm to 1e-5 relative; parameters to 5% of one Adam step (lr).

    Adam's first step is lr * g / (|g| + eps): a gradient entry at round-off level (~1e-9)
    can land on either side of eps after a reduce-scatter, so a few entries may differ by a
    fraction of lr; every other entry agrees to float32 precision.
    """
    import ray

    from workers.trainer import TrainerWorker

    samples = random_samples(8, group_size=4)
    algo = AlgorithmConfig(group_size=4, credit=CreditConfig(criterion="position"))
    values = {"step": 0, "percentile": 0.5, "decay": 0.0, "entropy_adv_scale": 0.0}
    ref_metrics, ref_sd = _train(ckpt, samples, algo, values, budget=40)

    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        cfg = TrainerConfig(lr=LR, micro_batch_tokens=20, num_cpus=0.5, num_workers=2)
        actors = [ray.remote(TrainerWorker).options(num_cpus=0.5).remote(r, 2, cfg, 0) for r in range(2)]
        addr, port = ray.get(actors[0].address.remote())
        ray.get([a.setup.remote(addr, port, ckpt, 1.0) for a in actors])
        plan = plan_micro_batches(samples, 2, cfg.micro_batch_tokens)
        stats = ray.get([a.compute_stats.remote([pack(samples, ix) for ix in plan[r]]) for r, a in enumerate(actors)])
        fields = _fields([x for rank in stats for x in rank], samples, algo, values)
        denom = aggregation_denominator(algo.loss.agg, fields["token_weight"])
        ray.get([a.set_schedule.remote(values) for a in actors])
        mbs = [[[pack(samples, ix).with_fields(**fields) for ix in plan[r]]] for r in range(2)]
        metrics = ray.get([a.train.remote(0, mbs[r], algo.loss, [denom], 16) for r, a in enumerate(actors)])
        exports = [a.export_weights.options(num_returns=2).remote(1 << 30) for a in actors]  # a collective
        sd = ray.get(exports[0][0])
    finally:
        ray.shutdown()
    from rlvr.rollout.weight_sync import from_buckets

    sd = dict(from_buckets(sd))
    assert len(plan[0]) == len(plan[1]) >= 2  # really sharded and micro-batched
    for m in metrics:
        assert m["train/loss"] == pytest.approx(ref_metrics["train/loss"], rel=1e-5, abs=1e-7)
        assert m["train/grad_norm"] == pytest.approx(ref_metrics["train/grad_norm"], rel=1e-5)
        assert m["schedule/percentile"] == 0.5
    assert set(sd) == set(ref_sd)
    worst = max(float((sd[k] - ref_sd[k]).abs().max()) for k in sd)
    close = np.mean([float(torch.isclose(sd[k], ref_sd[k], rtol=0, atol=1e-6).float().mean()) for k in sd])
    assert worst <= 0.05 * LR, worst
    assert close > 0.99


def test_on_policy_without_stats_pass_matches_recomputed_old_logprob(ckpt):
    """No ``old_logprob`` field: ratio is exactly 1 (old = logprob.detach()); the update equals the one
    with the stats pass's recomputed old log-probs to float32 round-off, at a fraction of the cost."""
    samples = random_samples(8, group_size=4)
    algo = AlgorithmConfig(group_size=4, credit=CreditConfig(criterion="position"))
    values = {"percentile": 0.5, "decay": 0.0, "entropy_adv_scale": 0.0}
    m_ref, sd_ref = _train(ckpt, samples, algo, values)
    trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=40))
    plan = plan_micro_batches(samples, 1, 40)[0]
    fields = _fields(trainer.compute_stats([pack(samples, ix) for ix in plan]), samples, algo, values)
    fields.pop("old_logprob")
    denom = aggregation_denominator(algo.loss.agg, fields["token_weight"])
    m = trainer.train_step([[pack(samples, ix).with_fields(**fields) for ix in plan]], algo.loss, [denom], 16)
    sd = trainer.full_state_dict()
    assert m["train/loss"] == pytest.approx(m_ref["train/loss"], rel=1e-5, abs=1e-7)
    assert m["train/grad_norm"] == pytest.approx(m_ref["train/grad_norm"], rel=1e-5)
    assert m["loss/clip_frac_low"] == m["loss/clip_frac_high"] == 0.0  # ratio exactly 1
    worst = max(float((sd[k] - sd_ref[k]).abs().max()) for k in sd)
    assert worst <= 0.05 * LR, worst


def test_policy_metrics_are_token_means_of_the_training_forward(ckpt):
    """policy/entropy (all tokens), policy/entropy_targeted (the credit selection) and the rollout
    log-prob gap, against a direct computation from the same model's stats."""
    samples = random_samples(6, group_size=3)
    algo = AlgorithmConfig(group_size=3, credit=CreditConfig(criterion="position"))
    values = {"percentile": 0.5, "decay": 0.0, "entropy_adv_scale": 0.0}
    trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=30))
    plan = plan_micro_batches(samples, 1, 30)[0]
    stats = trainer.compute_stats([pack(samples, ix) for ix in plan])
    fields = _fields(stats, samples, algo, values)
    _, mask = pad_responses(samples)
    lp, ent = torch.zeros(mask.shape), torch.zeros(mask.shape)
    for index, l, e in stats:
        lp[torch.tensor(index), : l.shape[1]], ent[torch.tensor(index), : e.shape[1]] = l, e
    targeted = (fields["token_weight"] > 0).float()
    gaps = torch.linspace(0.0, 1.0, mask.numel()).reshape(mask.shape)  # a different gap per token
    fields.update(targeted=targeted, rollout_logprob=lp - gaps)
    denom = aggregation_denominator(algo.loss.agg, fields["token_weight"])
    m = trainer.train_step([[pack(samples, ix).with_fields(**fields) for ix in plan]], algo.loss, [denom], 16)
    maskf = mask.float()
    assert len(plan) >= 2  # summed over several micro-batches
    assert m["policy/entropy"] == pytest.approx(float((ent * maskf).sum() / maskf.sum()), rel=1e-5)
    assert m["policy/entropy_targeted"] == pytest.approx(float((ent * targeted).sum() / targeted.sum()), rel=1e-5)
    assert m["rollout/logprob_mismatch"] == pytest.approx(float((gaps * maskf).sum() / maskf.sum()), rel=1e-4)


def test_stats_pass_only_when_something_ranks_by_the_policy():
    from rlvr.config import RLConfig
    from rlvr.loop.step import needs_policy_stats

    off = {"entropy_adv_scale": 0.0}
    for criterion, expected in (("none", False), ("position", False), ("entropy", True), ("surprisal", True),
                                ("advantage_entropy", True)):
        cfg = RLConfig(algorithm=AlgorithmConfig(credit=CreditConfig(criterion=criterion)))
        assert needs_policy_stats(cfg, off) is expected, criterion
    cfg = RLConfig(algorithm=AlgorithmConfig(credit=CreditConfig(criterion="position")))
    assert needs_policy_stats(cfg, {"entropy_adv_scale": 0.5})  # entropy-shaped advantage
    assert needs_policy_stats(RLConfig(trainer=TrainerConfig(updates_per_batch=2)), off)  # off-policy after the first update


def test_contributing_samples_keeps_whole_informative_groups_and_balances_ranks():
    from rlvr.train.batching import contributing_samples

    group = [0, 0, 1, 1, 2, 2, 3, 3]
    contributes = [False, False, True, False, False, False, False, True]
    assert contributing_samples(range(8), contributes, group, 1) == [2, 3, 6, 7]
    assert contributing_samples(range(8), contributes, group, 4) == [2, 3, 6, 7]
    # 3 ranks: groups 1 and 3 give 4 samples; zero groups are added first to last until 6
    assert contributing_samples(range(8), contributes, group, 3) == [0, 1, 2, 3, 6, 7]
    # nothing informative: one group is still trained (AdamW steps on exact zero gradients)
    assert contributing_samples(range(8), [False] * 8, group, 2) == [0, 1]
    # a sub-range (one mini-batch); uneven groups; no even split reachable (3 over 2 ranks): everything
    assert contributing_samples([4, 5, 6, 7], contributes, group, 2) == [6, 7]
    assert contributing_samples(range(5), [False, False, False, False, True], [0, 0, 1, 1, 2], 2) == [0, 1, 2, 3, 4]
    assert contributing_samples(range(5), [False, False, False, False, True], [0, 0, 1, 1, 2], 3) == [0, 1, 4]
    assert contributing_samples(range(3), [False, False, True], [0, 0, 1], 2) == [0, 1, 2]


def test_skipping_zero_advantage_groups_leaves_the_update_unchanged(ckpt):
    """Train on every sample vs. only the groups with a non-zero advantage, same denominator:
    same loss, grad norm and parameters (to float32 summation order)."""
    from rlvr.train.batching import contributing_samples

    samples = random_samples(16, group_size=4)
    for s, r in zip(samples, [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1]):
        s.reward = float(r)  # groups 0 (all right) and 2 (all wrong) have zero variance
    algo = AlgorithmConfig(group_size=4, credit=CreditConfig(criterion="none"))
    values = {"percentile": 0.0, "decay": 1.0, "entropy_adv_scale": 0.0}
    results = []
    for skip in (False, True):
        trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=40))
        fields = _fields(trainer.compute_stats([pack(samples, ix) for ix in plan_micro_batches(samples, 1, 40)[0]]),
                         samples, algo, values)
        fields.pop("old_logprob")
        denom = aggregation_denominator(algo.loss.agg, fields["token_weight"])
        index = list(range(len(samples)))
        if skip:
            contributes = ((fields["advantages"] * fields["token_weight"]) != 0).any(dim=1).tolist()
            index = contributing_samples(index, contributes, [s.group for s in samples], 1)
            assert index == list(range(4, 8)) + list(range(12, 16))
        plan = plan_micro_batches(samples, 1, 40, index)[0]
        m = trainer.train_step([[pack(samples, ix).with_fields(**fields) for ix in plan]], algo.loss, [denom], 16)
        results.append((m, trainer.full_state_dict()))
    (m_all, sd_all), (m_skip, sd_skip) = results
    assert m_skip["train/loss"] == pytest.approx(m_all["train/loss"], rel=1e-5, abs=1e-8)
    assert m_skip["train/grad_norm"] == pytest.approx(m_all["train/grad_norm"], rel=1e-5)
    assert max(float((sd_all[k] - sd_skip[k]).abs().max()) for k in sd_all) <= 0.05 * LR
    assert m_all["train/grad_norm"] > 0
