"""A verl-format Parquet file trains on the quickstart model.

No verl ``data_source`` maps to the arithmetic verifier, so the file carries the quickstart's arithmetic
prompts as ``openai/gsm8k`` rows with integer ground truths, which the GSM8K verifier scores (the last
number of the response, or the one after ``####``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.config import DatasetConfig
from rlvr.data import load_dataset
from rlvr.data.arithmetic import generate_arithmetic
from rlvr.verifiers import compute_reward

ROOT = Path(__file__).resolve().parents[1]


def write_verl_parquet(path: str, rows: int = 64) -> list:
    """verl's RL layout: ``prompt`` as chat messages, ``reward_model.ground_truth``, ``data_source``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    problems = generate_arithmetic(rows, seed=1, max_operand=30)
    table = pa.Table.from_pylist([{
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": p.prompt}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": p.ground_truth},
        "extra_info": {"split": "train", "index": i},
    } for i, p in enumerate(problems)])
    pq.write_table(table, path)
    return problems


def test_verl_rows_become_gsm8k_prompts_the_verifier_scores(tmp_path):
    path = str(tmp_path / "train.parquet")
    problems = write_verl_parquet(path, rows=8)
    prompts = load_dataset(DatasetConfig(adapter="verl", path=path))
    assert [(p.prompt, p.ground_truth, p.verifier) for p in prompts] == [
        (q.prompt, q.ground_truth, "gsm8k") for q in problems]
    gold = prompts[0].ground_truth
    assert compute_reward("gsm8k", gold, gold) == 1.0  # a bare answer, as the warm-started model writes
    assert compute_reward("gsm8k", f"{prompts[0].prompt}{gold}", gold) == 1.0  # worked out: the last number
    assert compute_reward("gsm8k", str(int(gold) + 1), gold) == 0.0


@pytest.mark.slow
def test_quickstart_trains_two_steps_on_a_verl_parquet_file(tmp_path):
    from rlvr.loop.metrics import read_metrics

    path = str(tmp_path / "train.parquet")
    write_verl_parquet(path)
    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml", "data.train.adapter=verl",
           f"data.train.path={path}", "schedule.total_steps=2", f"logging.run_dir={run_dir}",
           "logging.progress=false"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    rows = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in rows)
