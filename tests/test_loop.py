"""The distributed loop on real actors (vLLM engine, reward pool, 2 FSDP trainers, scheduler).

One Ray session for the whole module (start-up dominates); each test drives ``RLLoop.step``
directly so it can look inside: what the trainers were told, what the engine loaded, what
the verifier saw, and whether a killed worker stops the run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from rlvr.algo.schedules import schedule_value
from rlvr.batching import Sample
from rlvr.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    import ray
    from transformers import AutoTokenizer

    from rlvr.data import PromptSampler, load_dataset
    from rlvr.driver import RLLoop
    from rlvr.runtime import create_actors, start_ray
    from rlvr.tiny_model import ensure_model

    run_dir = tmp_path_factory.mktemp("loop")
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml")], [
        f"logging.run_dir={run_dir}", "schedule.total_steps=6", "data.prompts_per_step=4",
        "schedule.percentile={kind: linear, magnitude: 0.99, end: 0.0, start_ratio: 0.0, end_ratio: 0.8}",
        "schedule.decay={kind: linear, magnitude: 0.0, end: 0.5, start_ratio: 0.2, end_ratio: 1.0}",
    ])
    model_path = ensure_model(cfg.model, cfg.data.train.max_operand)
    start_ray(cfg)
    actors = create_actors(cfg, model_path, str(run_dir))
    rl = RLLoop(cfg, actors, AutoTokenizer.from_pretrained(model_path))
    rl.sampler = PromptSampler(load_dataset(cfg.data.train), cfg.data.prompts_per_step, cfg.data.seed)
    rl.history = []
    yield rl
    ray.shutdown()


def _step(rl):
    step = len(rl.history)
    metrics = rl.step(step, rl.sampler.next_batch())
    rl.history.append(metrics)
    return metrics


def test_scheduler_pushes_each_steps_values_and_engines_get_the_trainers_weights(loop):
    import ray

    for _ in range(3):
        m = _step(loop)
        assert m["rollout/logprob_mismatch"] < 1e-4  # float32 engine vs float32 trainer
        # the engine generates with exactly the weights the trainer just exported
        exports = [t.export_weights.options(num_returns=2).remote(1 << 30) for t in loop.actors.trainers]
        trainer_hash = ray.get(exports[0][1])
        engine_hashes = ray.get([w.weights_hash.remote() for w in loop.actors.rollouts])
        assert engine_hashes == [trainer_hash] * len(engine_hashes)
    cfg = loop.cfg.schedule
    for trainer in loop.actors.trainers:
        received = ray.get(trainer.received_schedule.remote())
        assert [r["step"] for r in received] == list(range(len(loop.history)))
        for r in received:
            assert r["percentile"] == schedule_value(cfg.percentile, r["step"], cfg.total_steps)
            assert r["decay"] == schedule_value(cfg.decay, r["step"], cfg.total_steps)
    assert loop.history[0]["schedule/percentile"] == pytest.approx(0.99)
    assert loop.history[0]["credit/targeted_frac"] < 0.6  # only the end of each response at p=0.99


def test_verifier_scores_the_full_response_whatever_the_percentile(loop):
    """At percentile 0.99 only the last token is trained, but the reward sees the whole text."""
    seen = []
    original = loop.score

    def spy(samples):
        original(samples)
        seen.extend(samples)

    loop.score = spy
    try:
        m = _step(loop)
    finally:
        loop.score = original
    assert seen and m["credit/targeted_frac"] < 1.0
    for s in seen:
        assert s.text == loop.tokenizer.decode(s.response_ids, skip_special_tokens=True)
    # an answer in the first half of a long response still scores 1 through the same path
    answer = Sample(prompt_ids=[1], response_ids=[1] * 20, rollout_logprob=[0.0] * 20,
                    text="19 and then a long tail of tokens that the 0.99 mask excludes",
                    ground_truth="19", verifier="arithmetic")
    loop.score([answer])
    assert answer.reward == 1.0


def test_killed_rollout_worker_and_reward_process_do_not_end_the_run(loop):
    import ray

    worker = loop.actors.rollouts[0]
    old_pid = ray.get(worker.pid.remote())
    original = loop.score

    def kill_then_score(samples):  # mid-step: after generation, before verify/train/sync
        os.kill(old_pid, signal.SIGKILL)
        os.kill(ray.get(loop.actors.reward.pids.remote())[0], signal.SIGKILL)
        original(samples)

    loop.score = kill_then_score
    try:
        m = _step(loop)  # sync_weights hits the dead engine: restarted, reloaded, step completes
    finally:
        loop.score = original
    assert ray.get(worker.pid.remote()) != old_pid
    assert len(loop.history) and m["time/sync"] > 0
    m = _step(loop)  # the restarted engine serves the next step with the synced weights
    assert m["rollout/logprob_mismatch"] < 1e-4
    assert ray.get(loop.actors.reward.metrics.remote())["processes_replaced"] >= 1
    assert torch.isfinite(torch.tensor(m["train/loss"]))
