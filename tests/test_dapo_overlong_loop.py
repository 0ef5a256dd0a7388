"""DAPO in the RL step: the soft overlong penalty reaches the advantages exactly as the pure function
(arXiv 2503.14476, Eq. 13) says, and dynamic sampling that runs out of rounds says how short it fell.

``RLLoop`` runs here on fake pools (no Ray, no vLLM, no model): scripted responses of chosen lengths and
verifier rewards, a trainer pool that records the fields it is sent, and no weight sync.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import dapo_eq13
from rlvr.algo.advantages import ADVANTAGES
from rlvr.config import OverlongConfig, load_config
from rlvr.data.adapters import Prompt
from rlvr.loop.groups import Pools
from rlvr.loop.metrics import format_line
from rlvr.loop.step import RLLoop, shape_rewards
from rlvr.rollout.sample import Sample

ROOT = Path(__file__).resolve().parents[1]
GROUP = 4


class FakeRollouts:
    """Each ``generate`` call plays the next scripted round: per prompt, ``GROUP`` (length, reward) pairs."""

    def __init__(self, rounds):
        self.rounds, self.calls = list(rounds), 0

    def submit(self, prompt_ids, n, temperature, seeds):
        script = self.rounds[self.calls]
        self.calls += 1
        assert n == GROUP and len(script) == len(prompt_ids)
        out = [Sample(prompt_ids=list(ids), response_ids=[3] * length, rollout_logprob=[0.0] * length,
                      text=str(reward), group=i)
               for i, (ids, responses) in enumerate(zip(prompt_ids, script)) for length, reward in responses]
        return SimpleNamespace(shards=[range(len(prompt_ids))], refs=[out], n=n, submitted=0.0, done_at=[0.0],
                               result=lambda: out)  # one engine, already done


class FakeReward:
    def score(self, requests):
        return [float(text) for _, text, _ in requests], [""] * len(requests)

    def submit_samples(self, samples, labels):
        return self.score([(v, s.text, gt) for s, (v, gt) in zip(samples, labels)])

    def wait(self, ref):
        return ref


class FakeTrainers:
    def __init__(self, world):
        self.world, self.sent = world, None

    def __len__(self):
        return self.world

    def train(self, step, per_rank, loss_cfg, denoms, norm_len):
        self.sent = per_rank
        return {"train/loss": 0.0}


class FakeScheduler:
    def broadcast(self):
        return {"step": 0, "percentile": 0.0, "decay": 1.0, "entropy_adv_scale": 0.0}

    def advance(self):
        return 1


class _Loop(RLLoop):
    def sync_weights(self):
        return {}  # no engines to load weights into (weight sync has its own tests)


def _loop(rounds, *overrides, prompts=2, world=2):
    cfg = load_config([], [f"algorithm.group_size={GROUP}", f"data.prompts_per_step={prompts}",
                           f"trainer.num_workers={world}", "algorithm.credit.criterion=none", *overrides])
    tokenizer = lambda text: {"input_ids": [2 + ord(c) % 20 for c in text]}
    pools = Pools(FakeRollouts(rounds), FakeReward(), FakeTrainers(world), FakeScheduler())
    return _Loop(cfg, pools, tokenizer)


def _batches(*batches):
    """``next_batch`` drawing ``batches`` in order."""
    return iter(batches).__next__


def _prompts(k, start=0):
    return [Prompt(prompt=f"q{start + i}", ground_truth="1", verifier="arithmetic") for i in range(k)]


def _sent_advantages(loop, n):
    """The per-sample advantage each trainer rank received, back in batch order."""
    adv = torch.full((n,), float("nan"))
    for rank in loop.pools.trainers.sent:
        for mb in rank[0]:
            adv[torch.tensor(mb.sample_index)] = mb.fields["advantages"][:, 0]
    return adv


# --------------------------------------------------------------------------- reward shaping
def test_shape_rewards_adds_the_pure_penalty_per_sample():
    lengths = torch.tensor([0, 5, 8, 9, 10, 11, 12, 13, 40])
    verified = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    cfg = OverlongConfig(max_len=12, cache=4, penalty=0.5)
    shaped, metrics = shape_rewards(verified, lengths, cfg)
    want = [v + dapo_eq13(int(n), 12, 4, 0.5) for v, n in zip(verified.tolist(), lengths.tolist())]
    assert shaped.tolist() == pytest.approx(want, abs=1e-7)
    penalties = [dapo_eq13(int(n), 12, 4, 0.5) for n in lengths.tolist()]
    assert metrics["reward/overlong_penalty_mean"] == pytest.approx(sum(penalties) / len(penalties))
    assert metrics["reward/overlong_frac"] == pytest.approx(6 / 9)  # lengths 9..40
    off, none = shape_rewards(verified, lengths, OverlongConfig())
    assert off is verified and none == {}


def test_step_trains_on_verifier_reward_plus_overlong_penalty():
    # two prompts; lengths across the ramp (max_len 12, cache 4: 9..12 on the ramp, 13+ the full penalty)
    script = [[[(4, 1.0), (9, 1.0), (11, 0.0), (12, 1.0)], [(13, 1.0), (6, 0.0), (10, 0.0), (30, 0.0)]]]
    loop = _loop(script, "algorithm.overlong.max_len=12", "algorithm.overlong.cache=4",
                 "algorithm.overlong.penalty=1.0", "rollout.max_tokens=32")
    metrics = loop.step(0, _batches(_prompts(2)))
    pairs = [p for prompt in script[0] for p in prompt]
    shaped = torch.tensor([r + dapo_eq13(n, 12, 4, 1.0) for n, r in pairs])
    want_adv, _ = ADVANTAGES.get("grpo")(shaped, GROUP, loop.cfg.algorithm.advantage_eps)
    torch.testing.assert_close(_sent_advantages(loop, len(pairs)), want_adv)
    penalties = [dapo_eq13(n, 12, 4, 1.0) for n, _ in pairs]
    assert metrics["reward/overlong_penalty_mean"] == pytest.approx(sum(penalties) / len(pairs))
    assert metrics["reward/overlong_frac"] == pytest.approx(6 / 8)
    assert metrics["reward/mean"] == pytest.approx(float(shaped.mean()))
    assert metrics["train/accuracy"] == pytest.approx(4 / 8)  # the verifier's, not lowered by the penalty


# --------------------------------------------------------------------------- dynamic sampling
def test_dynamic_sampling_that_runs_out_of_rounds_says_how_short_it_fell():
    same, mixed = [(4, 1.0)] * GROUP, [(4, 1.0), (4, 0.0), (4, 0.0), (4, 1.0)]
    # kept by the verifier reward: all-correct groups of different lengths are dropped even with the penalty
    ramp = [(4, 1.0), (12, 1.0), (11, 1.0), (4, 1.0)]
    rounds = [[same, mixed], [ramp, same], [same, same]]
    loop = _loop(rounds, "algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=3",
                 "algorithm.overlong.max_len=12", "algorithm.overlong.cache=4", prompts=2)
    metrics = loop.step(0, _batches(_prompts(2), _prompts(2, 2), _prompts(2, 4), _prompts(2, 6)))
    assert loop.pools.rollouts.calls == 3
    assert metrics["sampling/rounds"] == 3.0 and metrics["sampling/groups_short"] == 1.0
    assert "short 1 groups after 3 rounds" in format_line(1, 3, metrics)
    # enough informative groups in the first round: nothing short, one round
    loop = _loop([[mixed, mixed]], "algorithm.dynamic_sampling=true", prompts=2)
    metrics = loop.step(0, _batches(_prompts(2), _prompts(2, 2)))
    assert metrics["sampling/rounds"] == 1.0 and metrics["sampling/groups_short"] == 0.0
    assert "short" not in format_line(1, 3, metrics)


def test_dapo_config_loads_on_the_quickstart():
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml"), str(ROOT / "configs/dapo.yaml")],
                      ["rollout.max_tokens=12", "algorithm.overlong.max_len=12", "algorithm.overlong.cache=4"])
    assert cfg.algorithm.dynamic_sampling and cfg.algorithm.overlong.enabled


@pytest.mark.slow
def test_dapo_quickstart_logs_the_overlong_penalty(tmp_path):
    from rlvr.loop.metrics import merge_steps, read_metrics

    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml", "configs/dapo.yaml",
           "rollout.max_tokens=12", "algorithm.overlong.max_len=12", "algorithm.overlong.cache=4",
           "schedule.total_steps=2", f"logging.run_dir={tmp_path}", "logging.progress=false"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    rows = [r for r in merge_steps(read_metrics(str(tmp_path / "metrics.jsonl"))) if r["step"] >= 1]
    assert len(rows) == 2
    for r in rows:
        assert -1.0 <= r["reward/overlong_penalty_mean"] <= 0.0 and 0.0 <= r["reward/overlong_frac"] <= 1.0
        assert r["sampling/rounds"] >= 1
