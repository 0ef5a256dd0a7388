"""bench/trainer_bench.py: the tiny shape runs end to end on CPU, and the GPU shapes are the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import trainer_bench  # noqa: E402


def test_tiny_smoke_run(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, "bench/trainer_bench.py", "--shape", "tiny", "--steps", "1", "--warmup", "0",
                    "--peak-tflops", "2", "--json", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    r = json.loads(out.read_text())
    assert r["tokens_per_step"] == r["computed_tokens_per_rank"] == 2048  # packed: no padding computed
    assert r["micro_batches_per_rank"] >= 2  # gradient accumulation is exercised
    parts = r["forward_s"] + r["backward_s"] + r["optimizer_s"]
    assert r["step_s"] == pytest.approx(parts) and min(r["forward_s"], r["backward_s"], r["optimizer_s"]) > 0
    assert r["tokens_per_s"] == pytest.approx(2048 / r["step_s"])
    assert r["model_tflops"] == pytest.approx(6 * r["matmul_params"] * 2048 / r["step_s"] / 1e12)
    assert r["mfu"] == pytest.approx(r["model_tflops"] / 2)
    assert r["mfu_incl_attn"] == pytest.approx((r["model_tflops"] + r["attn_tflops"]) / 2)
    assert r["attn_tflops"] > 0 and r["peak_memory_gib"] > 0


def test_peak_flops_defaults():
    """H100 SXM dense bf16 only for CUDA + bf16; no nominal CPU peak is claimed."""
    assert trainer_bench.parse_args(["--shape", "tiny"]).peak_tflops is None
    assert trainer_bench.parse_args(["--device", "cuda", "--dtype", "bfloat16"]).peak_tflops == 989.0
    assert trainer_bench.parse_args(["--device", "cuda"]).peak_tflops is None  # fp32: state a peak yourself


@pytest.mark.parametrize("shape,total", [("0.5b", 494_032_768), ("1.5b", 1_543_714_304)])
def test_gpu_shapes_have_the_published_parameter_counts(shape, total):
    """Qwen2.5-0.5B / -1.5B totals (tied embeddings, so all of them are matmul parameters)."""
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(trainer_bench.qwen2_config(shape, "sdpa"))
    assert sum(p.numel() for p in model.parameters()) == total
    assert trainer_bench.matmul_params(model) == total


def test_synthetic_samples_hit_the_token_count():
    samples = trainer_bench.synthetic_samples(5000, 256, vocab=1024, seed=1)
    lengths = [s.num_tokens - 1 for s in samples]
    assert sum(lengths) == 5000
    assert all(64 <= n <= 256 for n in lengths[:-1]) and 1 <= lengths[-1] <= 256
    assert all(s.prompt_ids and s.response_ids for s in samples)
