"""`rlvr sweep` (launch/sweep.py) and its comparison (rlvr/tools/compare.py).

Pure parts against closed forms: the seed syntax, the run plan, the t-interval, the equal-samples
reading and the table, on metrics files written here.  End to end (slow): 2 configs x 2 seeds x 3
steps of the quickstart, the sweep killed during its second run and started again: the finished run
is skipped, the killed one is redone, and the comparison covers all four runs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import sweep
from rlvr.tools import compare, report

ROOT = Path(__file__).resolve().parents[1]


def test_parse_seeds():
    assert sweep.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert sweep.parse_seeds("0-2,5") == [0, 1, 2, 5] and sweep.parse_seeds("7") == [7]
    for bad in ("a", "1,1", "0-1,1", "3-1", ""):
        with pytest.raises(ValueError, match="--seeds"):
            sweep.parse_seeds(bad)


def test_plan_is_seed_major_and_refuses_colliding_names(tmp_path):
    runs = sweep.plan(["configs/grpo.yaml", "x/tp_schedule.yaml"], [3, 4], str(tmp_path))
    assert [(r.method, r.seed) for r in runs] == [("grpo", 3), ("tp_schedule", 3), ("grpo", 4), ("tp_schedule", 4)]
    assert runs[1].run_dir == os.path.join(tmp_path, "tp_schedule", "seed3")
    with pytest.raises(ValueError, match="grpo"):
        sweep.plan(["a/grpo.yaml", "b/grpo.yaml"], [0], str(tmp_path))
    cmd = sweep.train_command(runs[1], ["base.yaml"], ["trainer.lr=1e-5"])
    assert cmd[1:] == ["-m", "launch.cli", "train", "base.yaml", "x/tp_schedule.yaml", "seed=3", "data.seed=3",
                       f"logging.run_dir={runs[1].run_dir}", "logging.progress=false", "trainer.lr=1e-5",
                       "resume=auto"]
    assert sweep.train_command(runs[1], [], [], address="http://h:8265")[3] == "submit"
    assert sweep.train_command(runs[1], [], [], address="http://h:8265")[-2:] == ["--address", "http://h:8265"]


def test_interval_is_the_student_t_interval():
    iv = compare.interval([1.0, 2.0, 3.0])
    assert iv["mean"] == 2.0 and iv["std"] == 1.0
    assert iv["hi"] - 2.0 == pytest.approx(4.303 / math.sqrt(3))  # t(0.975, 2) = 4.303
    five = compare.interval([0.1, 0.4, 0.2, 0.3, 0.5])
    assert five["hi"] - five["mean"] == pytest.approx(2.776 * 0.158113883 / math.sqrt(5), rel=1e-6)
    assert compare.interval([0.7]) == {"mean": 0.7, "std": 0.0, "lo": 0.7, "hi": 0.7, "n": 1}


def _fake_run(root, method, seed, accuracy, generated, entropy=0.5):
    """A finished run dir: eval/accuracy at the steps of ``accuracy``, ``generated`` samples every step."""
    run_dir = root / method / f"seed{seed}"
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(max(accuracy) + 1):
            row = {"step": step}
            if step:
                row.update({"sampling/samples_generated": generated, "policy/entropy": entropy + step,
                            "time/step": 2.0})
            if step in accuracy:
                row["eval/accuracy"] = accuracy[step]
            f.write(json.dumps(row) + "\n")
    (run_dir / compare.MARKER).write_text(json.dumps({"method": method, "seed": seed}))
    return run_dir


def test_comparison_at_equal_steps_and_equal_samples(tmp_path):
    # a: 64 samples a step; b: 128 (twice the generation), evaluated at steps 0, 2, 4
    _fake_run(tmp_path, "a", 0, {0: 0.1, 2: 0.3, 4: 0.5}, 64)
    _fake_run(tmp_path, "a", 1, {0: 0.1, 2: 0.2, 4: 0.3}, 64)
    _fake_run(tmp_path, "b", 0, {0: 0.1, 2: 0.6, 4: 0.9}, 128)
    _fake_run(tmp_path, "b", 1, {0: 0.1, 2: 0.4, 4: 0.7}, 128)
    (tmp_path / "b" / "seed2").mkdir()
    (tmp_path / "b" / "seed2" / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.1}\n')  # unfinished
    paths = compare.write_comparison(str(tmp_path))
    data = json.loads(Path(paths["json"]).read_text())
    assert data["budget_samples"] == 4 * 64 and data["unfinished"] == [str(tmp_path / "b" / "seed2")]
    a, b = data["methods"]["a"]["table"], data["methods"]["b"]["table"]
    assert a["after"]["mean"] == pytest.approx(0.4) and b["after"]["mean"] == pytest.approx(0.8)
    assert a["gain"]["mean"] == pytest.approx(0.3) and b["auc"]["mean"] == pytest.approx((0.5 + 0.8) / 2)
    # b spent 256 samples by step 2: read there (0.6, 0.4), a at its end (0.5, 0.3)
    assert b["at_budget"]["mean"] == pytest.approx(0.5) and a["at_budget"]["mean"] == pytest.approx(0.4)
    assert a["final_entropy"]["mean"] == pytest.approx(0.5 + (1 + 2 + 3 + 4) / 4)  # the last 5 (here 4) steps
    assert b["samples"]["mean"] == 512 and a["train_seconds"]["mean"] == 8.0
    # paired by seed against the reference (a: no grpo here, so the first): 0.9 - 0.5 and 0.7 - 0.3
    assert data["reference"] == "a" and "after_vs_reference" not in a
    assert b["after_vs_reference"]["mean"] == pytest.approx(0.4) and b["after_vs_reference"]["std"] == pytest.approx(0)
    band = data["methods"]["b"]["accuracy"]
    assert band["step"] == [0, 2, 4] and band["mean"] == pytest.approx([0.1, 0.5, 0.8])
    assert band["hi"][1] - 0.5 == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2))
    table = Path(paths["md"]).read_text()
    assert "| b | 2 | 80.0 ± " in table and "| +40.0 ± 0.0 |" in table and "held-out at 256 samples" in table and "1 unfinished" in table
    assert os.path.getsize(paths["png"]) > 10_000
    os.remove(paths["png"])
    assert compare.is_sweep(str(tmp_path)) and not compare.is_sweep(str(tmp_path / "a" / "seed0"))
    assert report.main([str(tmp_path)]) == 0 and os.path.isfile(paths["png"])  # rlvr report redraws it


def test_a_config_typo_fails_before_any_run(tmp_path, capsys):
    code = sweep.main([str(ROOT / "configs/grpo.yaml"), "--seeds", "0-1", "--out", str(tmp_path),
                       "algorithm.exit_rule=balance"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "balanced, positive" in err[0]
    assert sweep.main([str(ROOT / "configs/grpo.yaml"), "--seeds", "x", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_sweep_runs_resumes_after_a_kill_and_compares(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "launch.cli", "sweep", "configs/grpo.yaml", "configs/tp_schedule.yaml",
           "--seeds", "0-1", "--base", "configs/quickstart_cpu.yaml", "--out", str(out),
           "schedule.total_steps=3", "eval.every=3", "eval.num_prompts=16", "data.prompts_per_step=4",
           "logging.tensorboard=false"]
    first = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not (out / "tp_schedule" / "seed0" / "metrics.jsonl").exists():  # run 1 done, run 2 has started
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGTERM)  # the sweep and its `rlvr train`, as a cluster would stop them
    log = first.communicate(timeout=300)[0]
    assert first.returncode != 0 and not (out / "tp_schedule" / "seed0" / compare.MARKER).exists(), log[-3000:]

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[sweep 1/4] grpo seed 0: finished earlier, skipped" in second.stdout
    assert second.stdout.count("skipped") == 1
    data = json.loads((out / "comparison.json").read_text())
    assert sorted(data["methods"]) == ["grpo", "tp_schedule"] and data["unfinished"] == []
    assert all(m["seeds"] == [0, 1] and m["last_step"] == 3 for m in data["methods"].values())
    for run in data["runs"]:
        assert run["samples"] == 3 * 4 * 8  # 3 steps x 4 prompts x group 8
    assert (out / "comparison.md").read_text().count("| grpo | 2 |") == 1 and (out / "comparison.png").exists()
