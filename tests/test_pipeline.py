"""The k-step pipeline without Ray: which batch each step trains, its staleness, the order prompts
are drawn in, scores matched to samples, checkpointed in-flight batches, and the interval math."""

from __future__ import annotations

import itertools
import random
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from rlvr.loop.pipeline import RolloutPipeline, intersect, union_length
from rlvr.rollout.sample import Sample


class FakeGeneration:
    """Two engines; engine w answers its prompts with text '<prompt>/<j>' for sample j."""

    def __init__(self, prompts, n):
        self.n, self.submitted, self.done_at = n, 0.0, [1.0, 2.0]
        self.shards = [range(len(prompts))[w::2] for w in range(2)]
        self.refs = [[Sample([], [], [], text=f"{prompts[i].prompt}/{j}") for i in s for j in range(n)]
                     for s in self.shards]

    def result(self):
        samples = [None] * (sum(len(s) for s in self.shards) * self.n)
        for shard, out in zip(self.shards, self.refs):
            for j, sample in enumerate(out):
                sample.group = shard[j // self.n]
                samples[sample.group * self.n + j % self.n] = sample
        return samples


class FakeReward:
    def submit_samples(self, samples, labels):  # reward = 1 when the text starts with the ground truth
        return [float(s.text.split("/")[0] == gt) for s, (_, gt) in zip(samples, labels)], [""] * len(samples)

    def wait(self, ref):
        return ref


class FakeLoop:
    def __init__(self, n=2):
        self.cfg = SimpleNamespace(algorithm=SimpleNamespace(group_size=n), rollout=SimpleNamespace(temperature=1.0))
        self.pools = SimpleNamespace(reward=FakeReward())
        self.submitted = []  # (stream, prompts) in submission order

    def submit_generation(self, prompts, n, temperature, stream):
        self.submitted.append((stream, [p.prompt for p in prompts]))
        return FakeGeneration(prompts, n)

    def label(self, samples, prompts):
        for s in samples:
            s.ground_truth, s.verifier = prompts[s.group].ground_truth, prompts[s.group].verifier

    @contextmanager
    def timed(self, name):
        yield

    def score(self, samples):
        raise AssertionError("pending scores were available")


def batches():
    counter = itertools.count()

    def next_batch():
        b = next(counter)
        # prompt text p<b>.<i>; ground truth: the text itself for even i, something else for odd i
        return [SimpleNamespace(prompt=f"p{b}.{i}", ground_truth=f"p{b}.{i}" if i % 2 == 0 else "x",
                                verifier="arithmetic") for i in range(3)]
    return next_batch


@pytest.mark.parametrize("k", [0, 1, 2])
def test_step_m_trains_batch_m_generated_k_versions_earlier(k):
    loop, next_batch = FakeLoop(), batches()
    pipe = RolloutPipeline(loop, k)
    for step in range(5):
        samples, prompts, metrics = pipe.take(step, version=step, next_batch=next_batch)
        assert [p.prompt for p in prompts] == [f"p{step}.{i}" for i in range(3)]  # batch m at step m
        assert [s.text for s in samples] == [f"p{step}.{i}/{j}" for i in range(3) for j in range(2)]
        assert [s.reward for s in samples] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # scores follow their samples
        assert metrics["pipeline/staleness"] == min(step, k)
        assert metrics["pipeline/in_flight"] == k
    # prompts are drawn in step order, each batch seeded by its own step's stream
    assert [s for s, _ in loop.submitted] == [64 * j for j in range(5 + k)]


def test_checkpointed_in_flight_batches_resume_exactly():
    loop, next_batch = FakeLoop(), batches()
    pipe = RolloutPipeline(loop, 2)
    pipe.take(0, 0, next_batch)
    state = pipe.state_dict()
    assert [b["step"] for b in state] == [1, 2] and all(b["samples"] for b in state)
    resumed_loop, resumed_next = FakeLoop(), batches()
    for _ in range(3):  # the sampler's cursor, restored from the same checkpoint: batches 0-2 drawn
        resumed_next()
    resumed = RolloutPipeline(resumed_loop, 2)
    resumed.load_state_dict(state)
    original = [pipe.take(s, s, next_batch)[0] for s in (1, 2, 3)]
    again = [resumed.take(s, s, resumed_next)[0] for s in (1, 2, 3)]
    assert [[x.text for x in b] for b in original] == [[x.text for x in b] for b in again]
    assert [s for s, _ in resumed_loop.submitted] == [64 * 3, 64 * 4, 64 * 5]  # only what was not saved


def _brute(intervals, window, dt=1e-3):
    lo, hi = window
    steps = int(round((hi - lo) / dt))
    return sum(dt for i in range(steps) if any(a <= lo + (i + 0.5) * dt < b for a, b in intervals))


def test_union_length_and_intersections_match_a_fine_grid():
    rng = random.Random(0)
    for _ in range(20):
        xs = [tuple(sorted((rng.uniform(0, 5), rng.uniform(0, 5)))) for _ in range(4)]
        ys = [tuple(sorted((rng.uniform(0, 5), rng.uniform(0, 5)))) for _ in range(3)]
        window = (1.0, 4.0)
        assert union_length(xs, window) == pytest.approx(_brute(xs, window), abs=5e-3)
        both = _brute(intersect(xs, ys), window)
        grid = sum(1e-3 for i in range(3000) if any(a <= 1 + (i + .5) * 1e-3 < b for a, b in xs)
                   and any(a <= 1 + (i + .5) * 1e-3 < b for a, b in ys))
        assert both == pytest.approx(grid, abs=5e-3)
