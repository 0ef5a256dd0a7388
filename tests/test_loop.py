"""The distributed loop on real actors (vLLM engine, reward pool, 2 FSDP trainers, scheduler).

One Ray session for the whole module (start-up dominates); each test drives ``RLLoop.step``
directly so it can look inside: what the trainers were told, what the engine loaded, what
the verifier saw, and whether a killed worker stops the run.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from rlvr.algo.schedules import schedule_value
from rlvr.rollout.sample import Sample
from rlvr.config import load_config
from rlvr.verifiers.arithmetic import arithmetic_reward

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    import ray

    from rlvr.loop.run import build_run
    from workers import ACTORS

    run_dir = tmp_path_factory.mktemp("loop")
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml")], [
        f"logging.run_dir={run_dir}", "schedule.total_steps=6", "data.prompts_per_step=4",
        "schedule.percentile={kind: linear, magnitude: 0.99, end: 0.0, start_ratio: 0.0, end_ratio: 0.8}",
        "schedule.decay={kind: linear, magnitude: 0.0, end: 0.5, start_ratio: 0.2, end_ratio: 1.0}",
        "algorithm.down_sample=intra_group",  # D^3S: its kept share is the third scheduled scalar
        "schedule.sample_keep={kind: linear, magnitude: 0.5, end: 1.0, start_ratio: 0.0, end_ratio: 0.5}",
    ])
    run = build_run(cfg, ACTORS)  # what `rlvr train` builds
    rl = run.loop
    rl.sampler = run.sampler
    rl.history = []
    yield rl
    ray.shutdown()


def _pid(actor):
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _step(rl):
    step = len(rl.history)
    metrics = rl.step(step, rl.sampler.next_batch)
    rl.history.append(metrics)
    return metrics


def test_scheduler_pushes_each_steps_values_and_engines_get_the_trainers_weights(loop):
    import ray

    for _ in range(3):
        m = _step(loop)
        assert m["rollout/logprob_mismatch"] < 1e-4  # float32 engine vs float32 trainer
        # the engine generates with exactly the weights the trainer just exported
        trainer_hash = loop.pools.trainers.export_weights(1 << 30).hash()
        engine_hashes = loop.pools.rollouts.weights_hashes()
        assert engine_hashes == [trainer_hash] * len(engine_hashes)
    cfg = loop.cfg.schedule
    for received in loop.pools.trainers.received_schedules():
        assert [r["step"] for r in received] == list(range(len(loop.history)))
        for r in received:
            assert r["percentile"] == schedule_value(cfg.percentile, r["step"], cfg.total_steps)
            assert r["decay"] == schedule_value(cfg.decay, r["step"], cfg.total_steps)
            assert r["sample_keep"] == schedule_value(cfg.sample_keep, r["step"], cfg.total_steps)
    G = loop.cfg.algorithm.group_size  # D^3S keeps ceil(share * G) of each group: 4, 6, 7 of 8
    assert [m["d3s/kept_frac"] for m in loop.history] == [
        math.ceil(G * schedule_value(cfg.sample_keep, s, cfg.total_steps)) / G for s in range(len(loop.history))]
    assert loop.history[0]["schedule/percentile"] == pytest.approx(0.99)
    assert loop.history[0]["credit/targeted_frac"] < 0.6  # only the end of each response at p=0.99


def test_verifier_scores_the_full_response_whatever_the_percentile(loop):
    """At percentile 0.99 only the last token is trained, but the reward sees the whole text."""
    step = len(loop.history)
    seen, _ = loop.rollout(step, loop.sampler.next_batch)  # the step's generate + verify phase
    assert seen and schedule_value(loop.cfg.schedule.percentile, step, loop.cfg.schedule.total_steps) > 0.3
    for s in seen:
        assert s.text == loop.tokenizer.decode(s.response_ids, skip_special_tokens=True)
        assert s.reward == arithmetic_reward(s.text, s.ground_truth)
    # an answer in the first half of a long response still scores 1 through the same path
    answer = Sample(prompt_ids=[1], response_ids=[1] * 20, rollout_logprob=[0.0] * 20,
                    text="19 and then a long tail of tokens that the 0.99 mask excludes",
                    ground_truth="19", verifier="arithmetic")
    loop.score([answer])
    assert answer.reward == 1.0


def test_killed_rollout_worker_and_reward_process_do_not_end_the_run(loop):
    import ray

    worker = loop.pools.rollouts.actors[0]
    old_pid = _pid(worker)
    os.kill(old_pid, signal.SIGKILL)  # generation hits the dead engine: restarted, reloaded, resubmitted
    os.kill(ray.get(loop.pools.reward.actor.pids.remote())[0], signal.SIGKILL)
    m = _step(loop)
    assert _pid(worker) != old_pid
    assert m["rollout/logprob_mismatch"] < 1e-4  # the restarted engine serves the synced weights
    assert loop.pools.rollouts.weights_hashes()[0] == loop.pools.trainers.export_weights(1 << 30).hash()
    assert ray.get(loop.pools.reward.actor.metrics.remote())["processes_replaced"] >= 1
    assert torch.isfinite(torch.tensor(m["train/loss"]))
