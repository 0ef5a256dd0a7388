"""Reinforce-Ada (rlvr/algo/reinforce_ada.py and ``reinforce_ada_rollout`` in the RL step): the exit rule,
the balanced group and the global-statistics advantage against closed forms and slow references; the
rollout on fake pools (as tests/test_dapo_overlong_loop.py) re-samples exactly the unfinished prompts
with the seed stream step*64 + round; and the config rules around ``algorithm.sampling``."""

from __future__ import annotations

import itertools
import statistics

import pytest
import torch

from rlvr.algo.reinforce_ada import balanced_group, global_advantages, is_done, prompt_advantages, targets
from rlvr.config import ConfigError, load_config
from rlvr.loop.groups import Pools
from rlvr.rollout.engine import request_seeds
from test_dapo_overlong_loop import (GROUP, FakeReward, FakeRollouts, FakeScheduler, FakeTrainers, _batches, _Loop,
                                     _prompts, _sent_advantages)


# --------------------------------------------------------------------------- pure parts
def test_targets_and_exit_rule():
    assert targets(8) == (4, 4) and targets(5) == (2, 3) and targets(2) == (1, 1)
    assert is_done([1, 0, 1, 0], 4) and is_done([1, 1, 0, 0, 0, 1], 4)
    assert not is_done([1, 1, 1, 0], 4) and not is_done([0, 0, 0, 0, 0, 0, 0, 1], 4)
    assert not is_done([1, 0], 4)  # enough of neither
    # positive (Reinforce-Ada-pos): one right answer is enough, however many wrong ones
    assert is_done([0, 0, 0, 1], 4, "positive") and is_done([1], 4, "positive")
    assert not is_done([0, 0, 0, 0, 0, 0, 0, 0], 4, "positive") and not is_done([0.5], 4, "positive")


def _slow_group(rewards, G, threshold=0.5):
    """The reference: the earliest floor(G/2) positives, negatives for the rest, then fill from either kind."""
    pos = [i for i, r in enumerate(rewards) if r > threshold]
    neg = [i for i, r in enumerate(rewards) if r <= threshold]
    take_pos = pos[: G // 2]
    take_neg = neg[: G - len(take_pos)]
    take_pos = pos[: G - len(take_neg)]
    return sorted(take_pos + take_neg)


@pytest.mark.parametrize("G", [2, 3, 4, 5])
def test_balanced_group_matches_the_reference_on_every_reward_pattern(G):
    for m in range(G, G + 4):
        for rewards in itertools.product([0.0, 1.0], repeat=m):
            got = balanced_group(list(rewards), G)
            assert got == _slow_group(rewards, G) and len(got) == G
            n_pos = sum(rewards[i] > 0.5 for i in got)
            total_pos = sum(r > 0.5 for r in rewards)
            assert n_pos == min(max(G // 2, G - (m - total_pos)), total_pos)  # balanced as far as possible


def test_balanced_group_examples():
    assert balanced_group([0, 0, 0, 1, 0, 1, 1, 1], 4) == [0, 1, 3, 5]
    assert balanced_group([1, 1, 1, 1, 0, 1], 4) == [0, 1, 2, 4]  # one negative: positives fill
    assert balanced_group([0, 0, 0, 0], 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cannot form"):
        balanced_group([1, 0], 4)


def test_global_advantages_use_every_collected_reward():
    collected = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    group = torch.tensor([0.0, 0.0, 1.0, 1.0])
    mean, std = 0.25, statistics.stdev(collected.tolist())
    want = [(r - mean) / (std + 1e-6) for r in group.tolist()]
    assert global_advantages(group, collected, True, 1e-6).tolist() == pytest.approx(want)
    assert global_advantages(group, collected, False, 1e-6).tolist() == pytest.approx([-0.25, -0.25, 0.75, 0.75])
    same = torch.ones(6)
    assert global_advantages(torch.ones(4), same, True, 1e-6).tolist() == [0.0] * 4  # exactly 0


def test_prompt_advantages_per_group_and_zero_variance_share():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    collected = [[1.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1.0] * 4]
    adv, m = prompt_advantages(rewards, collected, 4, True, 1e-6)
    c = torch.tensor(collected[0], dtype=torch.float64)
    want = ((rewards[:4].double() - c.mean()) / (c.std() + 1e-6)).float()
    torch.testing.assert_close(adv[:4], want)
    assert adv[4:].tolist() == [0.0] * 4 and m["zero_variance_group_frac"] == 0.5


# --------------------------------------------------------------------------- in the RL step
class _SeedRollouts(FakeRollouts):
    def __init__(self, rounds):
        super().__init__(rounds)
        self.seeds = []

    def submit(self, prompt_ids, n, temperature, seeds):
        self.seeds.append(list(seeds))
        return super().submit(prompt_ids, n, temperature, seeds)


def _ada_loop(rounds, *overrides, prompts=2):
    cfg = load_config([], [f"algorithm.group_size={GROUP}", f"data.prompts_per_step={prompts}", "trainer.num_workers=2",
                           "algorithm.credit.criterion=none", "algorithm.sampling=reinforce_ada", *overrides])
    tokenizer = lambda text: {"input_ids": [2 + ord(c) % 20 for c in text]}
    pools = Pools(_SeedRollouts(rounds), FakeReward(), FakeTrainers(2), FakeScheduler())
    return _Loop(cfg, pools, tokenizer)


def _r(*rewards):
    return [(3, r) for r in rewards]


def test_unfinished_prompts_are_sampled_again_and_grouped_balanced():
    rounds = [
        [_r(1, 0, 0, 1), _r(0, 0, 0, 0)],  # prompt 0 done at once; prompt 1 has no right answer
        [_r(0, 1, 0, 0)],                  # round 1: only prompt 1, one right answer (needs 2)
        [_r(1, 1, 0, 1)],                  # round 2: prompt 1 done
    ]
    loop = _ada_loop(rounds, "algorithm.max_sampling_rounds=3")
    step = 5
    metrics = loop.step(step, _batches(_prompts(2)))
    assert loop.pools.rollouts.calls == 3
    seeds = loop.pools.rollouts.seeds
    assert seeds[1] == list(request_seeds(loop.cfg.seed, step * 64 + 1, 1))
    assert seeds[2] == list(request_seeds(loop.cfg.seed, step * 64 + 2, 1))
    assert metrics["sampling/rounds"] == 3.0 and metrics["sampling/unfinished_frac"] == 0.0
    assert metrics["sampling/responses_per_prompt"] == (4 + 12) / 2
    assert metrics["sampling/samples_generated"] == 4 + 12  # the step's budget: every round counted
    collected = [[1, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1]]
    groups = [balanced_group(c, GROUP) for c in collected]
    assert groups[1] == [0, 1, 5, 8]  # the two earliest wrong, the two earliest right
    rewards = torch.tensor([float(collected[g][i]) for g in range(2) for i in groups[g]])
    want = torch.cat([global_advantages(rewards[4 * g: 4 * g + 4], torch.tensor(collected[g], dtype=torch.float64),
                                        True, loop.cfg.algorithm.advantage_eps) for g in range(2)])
    torch.testing.assert_close(_sent_advantages(loop, 8), want)
    assert metrics["train/accuracy"] == 0.5  # balanced groups


def test_the_round_budget_stops_sampling_and_the_prompt_keeps_what_it_has():
    loop = _ada_loop([[_r(1, 1, 1, 1), _r(1, 0, 0, 1)], [_r(1, 1, 1, 1)]], "algorithm.max_sampling_rounds=2")
    metrics = loop.step(0, _batches(_prompts(2)))
    assert loop.pools.rollouts.calls == 2 and metrics["sampling/unfinished_frac"] == 0.5
    assert metrics["adv/zero_variance_group_frac"] == 0.5
    # the all-right prompt (8 collected) has advantage 0: the trainers' zero-advantage skip leaves it out
    assert metrics["train/trained_frac"] == 0.5 and torch.isnan(_sent_advantages(loop, 8)[:4]).all()


def test_positive_exit_rule_stops_at_the_first_right_answer():
    rounds = [
        [_r(0, 0, 0, 0), _r(0, 0, 0, 0)],  # nothing right yet
        [_r(0, 1, 0, 0), _r(0, 0, 0, 0)],  # round 1: prompt 0 has one right answer and leaves
        [_r(1, 1, 1, 1)],                  # round 2: only prompt 1 is sampled again
    ]
    loop = _ada_loop(rounds, "algorithm.max_sampling_rounds=3", "algorithm.exit_rule=positive")
    metrics = loop.step(0, _batches(_prompts(2)))
    assert loop.pools.rollouts.calls == 3 and [len(s) for s in loop.pools.rollouts.seeds] == [2, 2, 1]
    assert metrics["sampling/samples_generated"] == 8 + 8 + 4
    assert metrics["sampling/unfinished_frac"] == 0.0 and metrics["sampling/rounds"] == 3.0
    # prompt 0 (8 collected, one right): balanced where possible = the right one and the 3 earliest wrong
    collected = [[0, 0, 0, 0, 0, 1, 0, 0], [0] * 8 + [1, 1, 1, 1]]
    assert balanced_group(collected[0], GROUP) == [0, 1, 2, 5]
    rewards = torch.tensor([float(c[i]) for c in collected for i in balanced_group(c, GROUP)])
    want = torch.cat([global_advantages(rewards[4 * g: 4 * g + 4], torch.tensor(collected[g], dtype=torch.float64),
                                        True, loop.cfg.algorithm.advantage_eps) for g in range(2)])
    torch.testing.assert_close(_sent_advantages(loop, 8), want)


def test_sampling_dynamic_is_dynamic_sampling():
    same, mixed = [(4, 1.0)] * GROUP, [(4, 1.0), (4, 0.0), (4, 0.0), (4, 1.0)]
    out = []
    for flag in ("algorithm.dynamic_sampling=true", "algorithm.sampling=dynamic"):
        cfg = load_config([], [f"algorithm.group_size={GROUP}", "data.prompts_per_step=2", "trainer.num_workers=2",
                               "algorithm.credit.criterion=none", flag])
        tokenizer = lambda text: {"input_ids": [2 + ord(c) % 20 for c in text]}
        loop = _Loop(cfg, Pools(FakeRollouts([[same, mixed], [mixed, same]]), FakeReward(), FakeTrainers(2),
                                FakeScheduler()), tokenizer)
        m = loop.step(0, _batches(_prompts(2), _prompts(2, 2)))
        out.append((m["sampling/rounds"], m["sampling/groups_short"], _sent_advantages(loop, 8).tolist()))
    assert out[0] == out[1] and out[0][:2] == (2.0, 0.0)


@pytest.mark.parametrize("overrides, words", [
    (["algorithm.sampling=reinforce_ada", "algorithm.dynamic_sampling=true"], ["dynamic_sampling", "reinforce_ada"]),
    (["algorithm.sampling=reinforce_ada", "algorithm.overlong.max_len=8", "algorithm.overlong.cache=2"],
     ["reinforce_ada", "overlong"]),
    (["algorithm.sampling=reinforce_ada", "algorithm.advantage=rloo"], ["reinforce_ada", "rloo"]),
    (["schedule.sample_keep=0.5"], ["sample_keep", "down_sample"]),
    (["schedule.sample_keep=0.0", "algorithm.down_sample=intra_group"], ["sample_keep", "(0, 1]"]),
    (["schedule.sample_keep=1.5", "algorithm.down_sample=intra_group"], ["sample_keep", "(0, 1]"]),
    (["algorithm.sampling=reinforce_ada", "algorithm.exit_rule=balance"], ["algorithm.exit_rule", "balanced",
                                                                          "positive"]),
    (["algorithm.exit_rule=positive"], ["algorithm.exit_rule", "algorithm.sampling=reinforce_ada"]),
    (["model.tiny.task=chain"], ["model.tiny.task=chain", "data.train.task"]),
    (["data.train.task=chain", "model.tiny.task=chain"], ["data.eval.task"]),
])
def test_config_rules(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config([], overrides)
    assert all(w in str(err.value) for w in words), str(err.value)
