"""Interrupts keep the work: SIGTERM/SIGINT mid-run finish the step in flight, checkpoint it at the
step boundary, and exit 143/130 with the command that resumes; the resumed run ends with exactly
the parameters of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.train import command
from rlvr.loop.signals import Interrupted, StopSignals

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
TRACEBACK = "Traceback (most recent call last)"


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml", f"logging.run_dir={run_dir}",
            f"schedule.total_steps={STEPS}", "checkpoint.every=0", "logging.progress=false",
            "eval.num_prompts=8", *extra]  # a short held-out set: the evaluation is not what is tested


def _logged_steps(run_dir):
    from rlvr.loop.metrics import read_metrics

    path = os.path.join(run_dir, "metrics.jsonl")
    return [row["step"] for row in read_metrics(path)] if os.path.exists(path) else []


def _params(ckpt_dir):  # as tests/test_e2e.py: the trainers' DCP state as one torch file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = os.path.join(ckpt_dir, "..", f"{os.path.basename(ckpt_dir)}.pt")
    dcp_to_torch_save(os.path.join(ckpt_dir, "trainer"), out)
    return torch.load(out, weights_only=False)["model"]


def _run(cmd, timeout=600):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert TRACEBACK not in out.stdout + out.stderr
    return out


# --------------------------------------------------------------------------- the handler, in this process
def test_a_signal_in_a_step_waits_for_it_and_one_in_setup_or_eval_abandons_it():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # Ray may have set its own
    stop = StopSignals()
    stop.install()
    try:
        stop.abandon = False  # a step in flight
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.signum == signal.SIGTERM  # recorded, nothing raised
        with pytest.raises(Interrupted) as info, stop.abandonable():  # an evaluation after it: not started
            pass
        assert info.value.exit_code == 143
        fresh = StopSignals()
        fresh.install()
        with pytest.raises(Interrupted) as info:  # set-up (abandon is the default): cut short at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert info.value.exit_code == 130 and info.value.checkpoint is None
        fresh.restore()
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handed back


def test_the_resume_command_replaces_resume_and_drops_fresh():
    argv = ["configs/a b.yaml", "logging.run_dir=/r", "resume=auto", "--fresh", "checkpoint.resume=/x"]
    assert command(argv, "resume=/r/checkpoints/step_000005") == \
        "rlvr train 'configs/a b.yaml' logging.run_dir=/r resume=/r/checkpoints/step_000005"


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_sigterm_mid_run_checkpoints_the_step_and_resumes_to_the_same_parameters(tmp_path):
    run_dir = str(tmp_path / "stopped")
    proc = subprocess.Popen(_cmd(run_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while 4 not in _logged_steps(run_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (stdout[-3000:], stderr[-3000:])
    assert TRACEBACK not in stdout + stderr and "SIGTERM received" not in stdout + stderr, stderr[-3000:]
    from rlvr.loop import checkpoint

    ckpt = checkpoint.latest(run_dir)
    step = checkpoint.read_driver_state(ckpt)["step"]
    assert step in (4, 5) and _logged_steps(run_dir) == list(range(step + 1))  # the step in flight finished
    assert f"Resume with: rlvr train configs/quickstart_cpu.yaml logging.run_dir={run_dir}" in stderr
    assert stderr.rstrip().endswith(f"resume={ckpt}")

    resumed = _run(_cmd(run_dir, f"resume={ckpt}"))
    assert f"resumed from {ckpt} at step {step}" in resumed.stdout
    assert _logged_steps(run_dir) == list(range(STEPS + 1))  # every step once: none lost, none twice
    again = _run(_cmd(run_dir, "resume=auto"))  # complete: says so, trains nothing, writes nothing
    assert "run already complete" in again.stdout

    reference = str(tmp_path / "uninterrupted")
    _run(_cmd(reference))
    final = f"step_{STEPS:06d}"
    pa = _params(os.path.join(reference, "checkpoints", final))
    pb = _params(os.path.join(run_dir, "checkpoints", final))
    assert set(pa) == set(pb) and all(torch.equal(pa[k], pb[k]) for k in pa)
