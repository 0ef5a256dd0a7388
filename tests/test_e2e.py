"""End to end through the CLI, as a user runs it: a short quickstart learns, a resumed run
continues exactly, the run can be plotted, and a killed driver leaves a usable checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
STEPS = 60  # the quickstart as users run it (about a minute of training on 2 cores)
RESUME_AT = STEPS - 2
VOLATILE = ("time/", "perf/", "pipeline/", "sync/")  # wall-clock and transport timings differ by nature


def _train(run_dir, *overrides, timeout=1200):
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml",
           f"logging.run_dir={run_dir}", f"schedule.total_steps={STEPS}", "logging.progress=false", *overrides]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out.stdout


def _metrics(run_dir):
    from rlvr.loop.metrics import merge_steps, read_metrics

    return {row["step"]: row for row in merge_steps(read_metrics(os.path.join(run_dir, "metrics.jsonl")))}


def _params(ckpt_dir):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = os.path.join(ckpt_dir, "..", f"{os.path.basename(ckpt_dir)}.pt")
    dcp_to_torch_save(os.path.join(ckpt_dir, "trainer"), out)
    return torch.load(out, weights_only=False)["model"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("quickstart"))
    stdout = _train(run_dir, f"checkpoint.every={RESUME_AT}", "checkpoint.keep=3")
    return run_dir, stdout


def test_quickstart_raises_held_out_accuracy(quickstart):
    run_dir, stdout = quickstart
    assert "held-out accuracy before training" in stdout and "held-out accuracy after training" in stdout
    m = _metrics(run_dir)
    before, after = m[0]["eval/accuracy"], m[STEPS]["eval/accuracy"]
    assert after >= before + 0.10 and after >= 1.5 * before, (before, after)
    assert m[1]["schedule/percentile"] == pytest.approx(0.99)  # TP-Schedule starts on the answer
    assert m[STEPS]["schedule/percentile"] == 0.0  # and ends as uniform GRPO
    assert all(m[s]["rollout/logprob_mismatch"] < 1e-4 for s in range(1, STEPS + 1))


def test_resume_in_a_new_process_continues_exactly(quickstart, tmp_path):
    run_dir, _ = quickstart
    ckpt = os.path.join(run_dir, "checkpoints", f"step_{RESUME_AT:06d}")
    resumed = str(tmp_path / "resumed")
    _train(resumed, f"resume={ckpt}")
    a, b = _metrics(run_dir)[STEPS], _metrics(resumed)[STEPS]
    keys = [k for k in a if not k.startswith(VOLATILE) and k not in ("time", "step")]
    assert keys and {k: a[k] for k in keys} == {k: b.get(k) for k in keys}
    pa = _params(os.path.join(run_dir, "checkpoints", f"step_{STEPS:06d}"))
    pb = _params(os.path.join(resumed, "checkpoints", f"step_{STEPS:06d}"))
    assert set(pa) == set(pb) and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_report_and_tensorboard_show_every_curve(quickstart, tmp_path):
    run_dir, _ = quickstart
    out = subprocess.run([sys.executable, "-m", "launch.cli", "report", run_dir, "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    data = json.loads((tmp_path / "report.json").read_text())
    series = next(iter(data["runs"].values()))["series"]
    plotted = {key for panel in series.values() for key in panel}
    for key in ("reward/mean", "eval/accuracy", "policy/entropy", "policy/entropy_targeted",
                "schedule/percentile", "schedule/decay", "credit/targeted_frac", "time/generate", "time/train"):
        assert key in plotted, key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"reward/mean", "schedule/percentile", "loss/clip_frac_high", "train/grad_norm"} <= scalars
    assert len(acc.Scalars("reward/mean")) == STEPS


def test_killed_driver_leaves_a_usable_checkpoint(tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml", f"logging.run_dir={run_dir}",
           "schedule.total_steps=500", "checkpoint.every=1", "checkpoint.keep=2", "eval.num_prompts=8",
           "logging.progress=false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen, deadline = 0, time.monotonic() + 900
    try:
        for line in proc.stdout:
            seen += "checkpoint:" in line
            if seen >= 2 or time.monotonic() > deadline:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait(timeout=60)
    assert seen >= 2
    from rlvr.loop import checkpoint

    latest = checkpoint.latest(str(run_dir))
    state = checkpoint.read_driver_state(latest)
    assert state["step"] >= 2 and "sampler" in state and "scheduler" in state
    params = _params(latest)
    assert params and all(torch.isfinite(v).all() for v in params.values() if v.is_floating_point())
