"""The chain-arithmetic reasoning task (rlvr/data/chain.py): prompts, worked solutions and the warm-start
teacher checked against a slow re-computation, the held-out split, scoring through the existing gsm8k
verifier, generation through ``load_dataset``, and the tiny model's cache key left as it was for the
single-operation task."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from rlvr.config import DatasetConfig, load_config
from rlvr.data import load_dataset
from rlvr.data.chain import CHAIN_TERMS, generate_chain, is_heldout, solution, teacher_solution
from rlvr.verifiers import compute_reward

ROOT = Path(__file__).resolve().parents[1]


def _evaluate(text: str) -> list[int]:
    """Running totals of "a+b-c=" from left to right (the slow reference)."""
    tokens = re.findall(r"\d+|[+-]", text.rstrip("="))
    totals, total = [], int(tokens[0])
    for op, x in zip(tokens[1::2], tokens[2::2]):
        total = total + int(x) if op == "+" else total - int(x)
        totals.append(total)
    return totals


def test_prompts_answers_and_solutions_match_a_slow_evaluation():
    for p in generate_chain(300, seed=3, max_operand=30):
        totals = _evaluate(p.prompt)
        assert len(totals) + 1 in CHAIN_TERMS and min(totals) >= 0  # no negative intermediate
        assert p.ground_truth == str(totals[-1]) and p.verifier == "gsm8k"
        assert all(0 <= x <= 30 for x in p.meta["terms"])
        full = solution(p.meta["terms"], p.meta["ops"])
        assert [int(v) for v in re.findall(r"=(\d+)", full)] == totals
        assert full.endswith(f"#### {totals[-1]}") and 15 <= len(full) <= 60  # tens of tokens
        assert compute_reward("gsm8k", full, p.ground_truth) == 1.0
        short = solution(p.meta["terms"], p.meta["ops"], num_steps=len(totals) - 1)
        assert compute_reward("gsm8k", short, p.ground_truth) == float(totals[-2] == totals[-1])


def test_example():
    p = generate_chain(1, seed=0, max_operand=30)[0]
    assert p.prompt == "24+28-13+1=" and p.ground_truth == "40"
    assert solution(p.meta["terms"], p.meta["ops"]) == "24+28=52, 52-13=39, 39+1=40 #### 40"


def test_heldout_split_is_disjoint_and_seeded():
    train = generate_chain(500, seed=1, max_operand=30)
    heldout = generate_chain(200, seed=2, max_operand=30, heldout=True)
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert all(not is_heldout(p.prompt) for p in train) and all(is_heldout(p.prompt) for p in heldout)
    assert [p.prompt for p in generate_chain(50, seed=1, max_operand=30)] == [p.prompt for p in train[:50]]
    assert [p.prompt for p in generate_chain(50, seed=9, max_operand=30)] != [p.prompt for p in train[:50]]


def test_teacher_completes_the_chain_at_the_given_share():
    prompts = generate_chain(4000, seed=0, max_operand=30)
    rng = random.Random(0)
    complete = [teacher_solution(p, 0.4, rng) == solution(p.meta["terms"], p.meta["ops"]) for p in prompts]
    assert sum(complete) / len(complete) == pytest.approx(0.4, abs=0.03)


def test_load_dataset_generates_the_task_from_the_config():
    cfg = DatasetConfig(task="chain", synthetic_rows=20, synthetic_seed=5, max_operand=12, heldout=True)
    assert [p.prompt for p in load_dataset(cfg)] == [p.prompt for p in generate_chain(20, 5, 12, heldout=True)]
    assert load_dataset(DatasetConfig(synthetic_rows=3))[0].verifier == "arithmetic"  # default: single


def test_the_single_task_model_keeps_its_cache_key():
    pytest.importorskip("transformers")
    from rlvr.data import GENERATOR_VERSION
    from rlvr.train.tiny_model import BUILD_VERSION, cache_key

    tiny = load_config([str(ROOT / "configs/quickstart_cpu.yaml")]).model.tiny
    old = {k: v for k, v in asdict(tiny).items() if k != "task"}  # the key as it was before the field
    spec = {"tiny": old, "max_operand": 30, "generator": GENERATOR_VERSION, "build": BUILD_VERSION}
    assert cache_key(tiny, 30) == hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    chain = load_config([str(ROOT / "configs/quickstart_reasoning.yaml")]).model.tiny
    assert chain.task == "chain" and cache_key(chain, 30) != cache_key(tiny, 30)


def test_reasoning_quickstart_config():
    cfg = load_config([str(ROOT / "configs/quickstart_reasoning.yaml")])
    assert cfg.data.train.task == cfg.data.eval.task == cfg.model.tiny.task == "chain"
    assert cfg.rollout.max_tokens >= 40 and cfg.rollout.max_tokens + 12 <= cfg.rollout.max_model_len
