"""rlvr.rollout without an engine: what it asks vLLM for, how it groups samples, and its environment."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from rlvr.rollout import vllm_engine as rollout
from rlvr.rollout.vllm_logs import DropMessage, drop_message
from rlvr.config import RolloutConfig


class FakeEngine:
    """Records the sampling params; answers each prompt with ``n`` completions of 2 tokens."""

    def __init__(self):
        self.params = None

    def generate(self, prompts, params, use_tqdm):
        self.params = params
        outs = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            comps = []
            for j in range(p.n):
                tokens = [10 * i + j, 99]
                logprobs = None if p.logprobs is None else [{t: SimpleNamespace(logprob=-0.5 * (k + 1))}
                                                            for k, t in enumerate(tokens)]
                comps.append(SimpleNamespace(token_ids=tokens, logprobs=logprobs, text=f"{i}:{j}"))
            outs.append(SimpleNamespace(outputs=comps))
        return outs


@pytest.mark.parametrize("return_logprobs", [True, False])
def test_generate_groups_samples_and_returns_logprobs_only_when_asked(return_logprobs):
    engine, cfg = FakeEngine(), RolloutConfig(max_tokens=7, top_p=0.9, return_logprobs=return_logprobs)
    samples = rollout.generate(engine, [[1, 2], [3]], 3, cfg, temperature=0.7, seeds=[11, 12], first_group=4)
    assert [(p.n, p.seed, p.max_tokens, p.top_p, p.temperature) for p in engine.params] == [
        (3, 11, 7, 0.9, 0.7), (3, 12, 7, 0.9, 0.7)]
    assert [p.logprobs for p in engine.params] == [0 if return_logprobs else None] * 2
    assert [s.text for s in samples] == ["0:0", "0:1", "0:2", "1:0", "1:1", "1:2"]  # sample j of prompt i: i*n+j
    assert [s.group for s in samples] == [4, 4, 4, 5, 5, 5]
    assert samples[4].prompt_ids == [3] and samples[4].response_ids == [11, 99]
    assert all(s.rollout_logprob == ([-0.5, -1.0] if return_logprobs else []) for s in samples)


def test_greedy_ignores_top_p():
    engine = FakeEngine()
    rollout.generate(engine, [[1]], 1, RolloutConfig(top_p=0.5), temperature=0.0, seeds=[0])
    assert engine.params[0].top_p == 1.0


def test_engine_env_and_threads(tmp_path):
    env = rollout.engine_env(str(tmp_path), RolloutConfig(engine_in_process=True))
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["VLLM_CACHE_ROOT"].startswith(str(tmp_path))
    env = rollout.engine_env(str(tmp_path), RolloutConfig(engine_in_process=False))
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert [rollout.engine_threads(RolloutConfig(num_cpus=c, num_threads=t)) for c, t in
            ((0.5, 0), (3, 0), (0.5, 2), (4, 1))] == [1, 3, 2, 1]


def test_a_dropped_vllm_message_is_dropped_once_and_nothing_else():
    name = "rlvr.test.vllm_logs"
    drop_message(name, "after the thread binding")
    drop_message(name, "after the thread binding")  # installed once
    log = logging.getLogger(name)
    assert sum(isinstance(f, DropMessage) for f in log.filters) == 1

    def passes(msg: str) -> bool:
        return log.filter(logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None))

    assert not passes("CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it.")
    assert passes("Linear: Failed to load weights") and passes("thread binding")
