"""The rollout engine contract, run against every backend in ``ROLLOUT_BACKENDS``.

Each backend is served the way a run serves it (``RolloutWorker`` actors in a ``RolloutGroup``)
on a tiny random checkpoint, and must: return ``n`` samples per prompt in prompt order with
consistent ids/log-probs; sample the same tokens for the same seeds whatever the batch and the
number of engines; and load weight buckets so that the returned hash is the hash of what was
sent and the loaded model generates what a fresh engine on those weights generates.
"""

from __future__ import annotations

import os

import pytest
import torch

from rlvr.rollout.engine import ROLLOUT_BACKENDS

pytestmark = pytest.mark.slow
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]


def _cfg(run_dir, backend, **extra):
    from rlvr.config import load_config

    overrides = {"rollout.backend": backend, "rollout.max_model_len": 64, "rollout.max_tokens": 6,
                 "rollout.num_cpus": 0.5, "rollout.num_workers": 2, "cluster.num_cpus": 2,
                 "logging.run_dir": str(run_dir), "data.prompts_per_step": 4, **extra}
    return load_config([], [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module", params=ROLLOUT_BACKENDS.names())
def served(request, tmp_path_factory):
    import ray
    from safetensors.torch import load_file

    from helpers import tiny_checkpoint
    from rlvr.loop.groups import RolloutGroup
    from rlvr.loop.placement import start_ray
    from workers import ACTORS

    root = tmp_path_factory.mktemp(f"contract-{request.param}")
    model = tiny_checkpoint(str(root / "model"))
    cfg = _cfg(root, request.param)
    start_ray(cfg)
    group = RolloutGroup.create(ACTORS.rollout, cfg, model, str(root))
    yield group, cfg, load_file(os.path.join(model, "model.safetensors"))
    ray.shutdown()


def test_samples_come_back_grouped_in_prompt_order(served):
    group, cfg, _ = served
    samples = group.generate(PROMPTS, 3, 1.0, [11, 12, 13, 14])
    assert len(samples) == 12
    for k, s in enumerate(samples):
        assert s.group == k // 3 and s.prompt_ids == PROMPTS[k // 3]
        assert 1 <= len(s.response_ids) <= cfg.rollout.max_tokens
        assert len(s.rollout_logprob) == len(s.response_ids) and all(lp <= 0.0 for lp in s.rollout_logprob)


def test_a_seed_fixes_the_sample_whatever_the_batch_and_the_engine(served):
    group, _, _ = served
    seeds = [21, 22, 23, 24]
    both = group.generate(PROMPTS, 2, 1.0, seeds)  # prompts split over 2 engines
    again = group.generate(PROMPTS[::-1], 2, 1.0, seeds[::-1])  # each prompt now on the other engine
    ids = [s.response_ids for s in both]
    assert ids == [s.response_ids for i in (3, 2, 1, 0) for s in again[2 * i:2 * i + 2]]
    assert ids != [s.response_ids for s in group.generate(PROMPTS, 2, 1.0, [31, 32, 33, 34])]


def test_loaded_weights_hash_and_generate_like_the_weights_sent(served):
    from rlvr.rollout.weight_sync import state_dict_hash, to_buckets

    group, _, original = served
    greedy_before = [s.response_ids for s in group.generate(PROMPTS, 1, 0.0, [0] * 4)]
    g = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in original.items()}
    for weights in (perturbed, original):
        hashes = group.load_weights(to_buckets(weights, bucket_bytes=1 << 14))  # several buckets
        assert hashes == [state_dict_hash(weights.items())] * len(group) == group.weights_hashes()
        greedy = [s.response_ids for s in group.generate(PROMPTS, 1, 0.0, [0] * 4)]
        assert (greedy == greedy_before) == (weights is original)
