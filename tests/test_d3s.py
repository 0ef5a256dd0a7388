"""D^3S sample level (rlvr/algo/d3s.py): the max-Var(A) subset against brute force over every subset,
the kept counts in closed form, the Scheduler's ``sample_keep`` schedule, and in the RL step (fake pools,
as tests/test_dapo_overlong_loop.py): dropped samples carry advantage x token_weight = 0 everywhere and
leave the loss denominator."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import torch

from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.d3s import DOWN_SAMPLING, down_sample, max_variance_rows, num_kept
from rlvr.algo.losses import aggregation_denominator
from rlvr.config import load_config
from rlvr.loop.groups import Pools
from test_dapo_overlong_loop import GROUP, FakeReward, FakeRollouts, FakeTrainers, _batches, _Loop, _prompts
from workers.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[1]


def _pop_var(xs):
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / len(xs)


def _brute_max_var(xs, k):
    """The largest population variance of any k-subset, by enumeration."""
    return max(_pop_var([xs[i] for i in c]) for c in itertools.combinations(range(len(xs)), k))


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("seed", range(40))
def test_max_variance_subset_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 8)
    # ties on purpose half the time: binary-reward advantages take only two values
    pool = [-1.5, -0.3, 0.0, 0.0, 0.7, 1.2] if seed % 2 else None
    xs = [rng.choice(pool) if pool else rng.uniform(-3, 3) for _ in range(n)]
    for k in range(1, n + 1):
        kept = max_variance_rows(torch.tensor([xs]), k)[0]
        assert int(kept.sum()) == k
        chosen = [x for x, keep in zip(xs, kept.tolist()) if keep]
        assert _pop_var(chosen) == pytest.approx(_brute_max_var(xs, k), abs=1e-9)


def test_the_kept_set_is_the_j_smallest_and_the_rest_largest():
    xs = torch.tensor([[0.0, 10.0, 1.0, 2.0, 9.0, 3.0]])
    # k = 2: the extremes {0, 10}; k = 4: {0, 1} + {9, 10} (variance 20.5) beats {0} + {3, 9, 10} etc.
    assert max_variance_rows(xs, 2)[0].tolist() == [True, True, False, False, False, False]
    assert max_variance_rows(xs, 4)[0].tolist() == [True, True, True, False, True, False]
    assert max_variance_rows(xs, 6)[0].all()


@pytest.mark.parametrize("n, keep, want", [(8, 1.0, 8), (8, 0.5, 4), (8, 0.3, 3), (8, 0.01, 1), (5, 0.6, 3),
                                           (10, 0.7, 7), (3, 1 / 3, 1), (0, 0.5, 0)])
def test_num_kept_is_ceil_of_the_share(n, keep, want):
    assert num_kept(n, keep) == want == (min(n, max(1, math.ceil(n * keep - 1e-6))) if n else 0)


def test_num_kept_refuses_a_share_outside_0_1():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sample_keep"):
            num_kept(4, bad)


def _slow_intra(adv, group_size, keep):
    out = []
    for g in range(0, len(adv), group_size):
        xs = adv[g:g + group_size]
        k = num_kept(group_size, keep)
        best = _brute_max_var(xs, k)
        out.append((xs, k, best))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_intra_group_keeps_the_max_variance_subset_of_each_group(seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (4 * 6,), generator=g).float()
    adv, _ = ADVANTAGES.get("grpo")(rewards, 6, 1e-6)
    kept = DOWN_SAMPLING.get("intra_group")(adv, 6, 0.5)
    for (xs, k, best), row in zip(_slow_intra(adv.tolist(), 6, 0.5), kept.view(-1, 6)):
        assert int(row.sum()) == k == 3
        assert _pop_var([x for x, keep in zip(xs, row.tolist()) if keep]) == pytest.approx(best, abs=1e-9)


def test_cross_group_keeps_the_max_variance_subset_of_the_batch():
    adv = torch.tensor([0.5, -0.5, 0.0, 0.0, 2.0, -1.0, 0.3, 0.1])
    kept = DOWN_SAMPLING.get("cross_group")(adv, 4, 0.5)
    chosen = adv[kept].tolist()
    assert len(chosen) == 4 and _pop_var(chosen) == pytest.approx(_brute_max_var(adv.tolist(), 4))
    assert DOWN_SAMPLING.get("none")(adv, 4, 0.25).all()  # none keeps everything, whatever the share


def test_down_sample_metrics():
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0])
    kept, m = down_sample("intra_group", adv, 4, 0.5)
    assert kept.tolist() == [True, True, False, False]
    assert m == {"kept_frac": 0.5, "adv_var_all": pytest.approx(0.5), "adv_var_kept": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="divisible"):
        down_sample("cross_group", adv, 3, 0.5)


def test_scheduler_broadcasts_the_sample_keep_schedule():
    cfg = load_config([str(ROOT / "configs/quickstart_reasoning.yaml"), str(ROOT / "configs/d3s.yaml")])
    sched = Scheduler(cfg.schedule)
    T = cfg.schedule.total_steps
    for step in (0, T // 4, T // 2, int(0.8 * T), T - 1):
        want = 0.5 + 0.5 * min(step / (0.8 * T), 1.0)  # linear 0.5 -> 1 over the first 80%
        assert sched.values(step)["sample_keep"] == pytest.approx(want)
    assert Scheduler(load_config([]).schedule).values(3)["sample_keep"] == 1.0  # default: keep all


# --------------------------------------------------------------------------- in the RL step
class _Trainers(FakeTrainers):
    def train(self, step, per_rank, loss_cfg, denoms, norm_len):
        self.denoms = denoms
        return super().train(step, per_rank, loss_cfg, denoms, norm_len)


class _Scheduler:
    def __init__(self, keep):
        self.keep = keep

    def broadcast(self):
        return {"step": 0, "percentile": 0.0, "decay": 1.0, "entropy_adv_scale": 0.0, "sample_keep": self.keep}

    def advance(self):
        return 1


def _d3s_loop(script, down, keep, prompts=2):
    cfg = load_config([], [f"algorithm.group_size={GROUP}", f"data.prompts_per_step={prompts}",
                           "trainer.num_workers=2", "algorithm.credit.criterion=none",
                           f"algorithm.down_sample={down}"])
    tokenizer = lambda text: {"input_ids": [2 + ord(c) % 20 for c in text]}
    pools = Pools(FakeRollouts([script]), FakeReward(), _Trainers(2), _Scheduler(keep))
    return _Loop(cfg, pools, tokenizer)


def _sent(loop, n, field):
    rows = {}
    for rank in loop.pools.trainers.sent:
        for mb in rank[0]:
            for j, i in enumerate(mb.sample_index):
                rows[i] = mb.fields[field][j]
    return rows


def test_dropped_samples_carry_no_advantage_and_leave_the_denominator():
    lengths = [3, 5, 2, 4, 6, 1, 3, 2]
    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    it = iter(zip(lengths, rewards))
    script = [[next(it) for _ in range(GROUP)] for _ in range(2)]
    loop = _d3s_loop(script, "intra_group", 0.5)
    metrics = loop.step(0, _batches(_prompts(2)))
    adv, _ = ADVANTAGES.get("grpo")(torch.tensor(rewards), GROUP, loop.cfg.algorithm.advantage_eps)
    kept = DOWN_SAMPLING.get("intra_group")(adv, GROUP, 0.5)
    weight, advantage = _sent(loop, 8, "token_weight"), _sent(loop, 8, "advantages")
    assert sorted(weight) == list(range(8))  # every group has a kept sample: nothing skipped
    for i in range(8):
        w, a = weight[i][: lengths[i]], advantage[i][: lengths[i]]
        if kept[i]:
            assert torch.all(w == 1.0) and torch.allclose(a, adv[i].expand_as(a))
        else:
            assert torch.all(w == 0.0) and torch.all(a * w == 0) and torch.all(a == 0)
    kept_tokens = sum(n for n, k in zip(lengths, kept.tolist()) if k)
    token_weight = torch.zeros(8, max(lengths))
    for i, n in enumerate(lengths):
        token_weight[i, :n] = float(kept[i])
    assert loop.pools.trainers.denoms == [aggregation_denominator("token_mean", token_weight)] == [kept_tokens]
    assert metrics["d3s/kept_frac"] == 0.5 and metrics["schedule/sample_keep"] == 0.5


def test_cross_group_dropping_a_whole_group_skips_its_compute():
    # group 0 is informative, group 1 all-correct (advantage 0): at keep 0.5 the batch keeps group 0's four
    script = [[(2, 1.0), (2, 0.0), (2, 1.0), (2, 0.0)], [(2, 1.0)] * GROUP]
    loop = _d3s_loop(script, "cross_group", 0.5)
    metrics = loop.step(0, _batches(_prompts(2)))
    assert metrics["d3s/kept_frac"] == 0.5
    assert metrics["train/trained_frac"] == 0.5  # the dropped group got no forward/backward
    assert sorted(_sent(loop, 8, "token_weight")) == [0, 1, 2, 3]
