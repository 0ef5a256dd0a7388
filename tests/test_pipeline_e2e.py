"""The pipeline and the weight transports end to end through the CLI on the quickstart:
k = 0 is the synchronous loop whatever the transport, k = 1 overlaps the pools and still learns,
and a k = 1 run resumed from a checkpoint (in-flight batch included) ends where the original did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("time/", "perf/", "pipeline/", "sync/")  # wall-clock and transport timings differ by nature
ASYNC = ("rollout.max_staleness=1", "algorithm.loss.off_policy=tis", "weight_sync.transport=collective")


def _train(run_dir, *overrides):
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml", f"logging.run_dir={run_dir}",
           "logging.progress=false", *overrides]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])


def _metrics(run_dir):
    from rlvr.loop.metrics import merge_steps, read_metrics

    return {row["step"]: row for row in merge_steps(read_metrics(os.path.join(run_dir, "metrics.jsonl")))}


def _stable(rows):
    return {s: {k: v for k, v in r.items() if not k.startswith(VOLATILE) and k != "time"} for s, r in rows.items()}


def _params(ckpt_dir):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = f"{ckpt_dir}.pt"
    dcp_to_torch_save(os.path.join(ckpt_dir, "trainer"), out)
    return torch.load(out, weights_only=False)["model"]


def _same_params(a, b):
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_k0_is_the_synchronous_loop_with_either_transport(tmp_path):
    runs = {t: tmp_path / t for t in ("object_store", "collective")}
    for transport, run_dir in runs.items():
        _train(run_dir, "schedule.total_steps=4", f"weight_sync.transport={transport}")
    a, b = (_metrics(d) for d in runs.values())
    assert _stable(a) == _stable(b) and len(a) == 5
    assert all(r["pipeline/staleness"] == 0.0 for s, r in a.items() if s)
    assert _same_params(*(str(d / "checkpoints/step_000004") for d in runs.values()))


def test_k1_overlaps_the_pools_and_learns(tmp_path):
    _train(tmp_path, "schedule.total_steps=60", *ASYNC)
    rows = _metrics(tmp_path)
    staleness = [rows[s]["pipeline/staleness"] for s in range(1, 61)]
    assert max(staleness) <= 1 and staleness.count(1.0) >= 55  # the first batch is generated in step
    assert sum(rows[s]["pipeline/overlap_frac"] for s in range(2, 61)) / 59 > 0.1
    assert all(rows[s]["offpolicy/is_ratio_max"] >= 1.0 for s in range(2, 61))
    before, after = rows[0]["eval/accuracy"], rows[60]["eval/accuracy"]
    assert after >= 2 * before and after >= before + 0.15, (before, after)


def test_k1_resume_trains_the_saved_in_flight_batch_exactly(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _train(full, "schedule.total_steps=6", "checkpoint.every=2", *ASYNC)
    assert (full / "checkpoints/step_000004/in_flight.pkl").is_file()
    _train(resumed, "schedule.total_steps=6", f"resume={full}/checkpoints/step_000004", *ASYNC)
    a, b = _stable(_metrics(full)), _stable(_metrics(resumed))
    assert all(a[s] == b[s] for s in (5, 6)), (a[5], b[5])
    assert _same_params(str(full / "checkpoints/step_000006"), str(resumed / "checkpoints/step_000006"))
