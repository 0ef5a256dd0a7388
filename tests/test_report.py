"""`rlvr report`: PNG + HTML + report.json over fake run directories."""

from __future__ import annotations

import json
import os
import struct

import pytest

from launch.cli import main as cli
from rlvr.tools.report import PANELS

FULL_KEYS = [k for _, _, keys in PANELS.values() for k in keys]


def fake_run(path, steps, keys, eval_every=5, split_eval=False):
    """A metrics.jsonl whose value of key i at step s is i + s / 100 (eval/accuracy on eval steps only)."""
    os.makedirs(path)
    expected = {}
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step in range(steps):
            row = {"step": step, "time": 1000.0 + step}
            for i, key in enumerate(keys):
                if key == "eval/accuracy" and step % eval_every:
                    continue
                row[key] = None if (key == "policy/entropy" and step == 2) else i + step / 100
                expected.setdefault(key, ([], []))
                expected[key][0].append(step)
                expected[key][1].append(row[key])
            evals = {}
            if split_eval and "eval/accuracy" in row:  # evaluation logged as a second row of the step
                evals = {"step": step, "eval/accuracy": row.pop("eval/accuracy")}
            f.write(json.dumps(row) + "\n")
            if evals:
                f.write(json.dumps(evals) + "\n")
    return expected


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_report_overlays_runs_and_records_every_series(tmp_path, capsys):
    no_credit = ("schedule/", "credit/", "policy/entropy_targeted")
    partial = [k for k in FULL_KEYS if not k.startswith(no_credit)]
    runs = {
        "grpo": fake_run(tmp_path / "grpo", 12, partial),
        "static_entropy80": fake_run(tmp_path / "static_entropy80", 10, FULL_KEYS, split_eval=True),
        "tp_schedule": fake_run(tmp_path / "tp_schedule", 15, FULL_KEYS + ["time/step"]),
    }
    out = tmp_path / "out"
    assert cli(["report", *(str(tmp_path / name) for name in runs), "--out", str(out)]) == 0
    assert str(out / "report.png") in capsys.readouterr().out

    width, height = png_size(out / "report.png")
    assert 800 <= width <= 4000 and 400 <= height <= 3000
    assert os.path.getsize(out / "report.png") > 20_000

    report = json.loads((out / "report.json").read_text())
    assert set(report["runs"]) == set(runs)
    for name, expected in runs.items():
        run = report["runs"][name]
        for panel, (_, _, keys) in PANELS.items():
            for key in keys:
                if key in expected:
                    steps, values = expected[key]
                    assert run["series"][panel][key] == {"step": steps, "value": values}, (name, key)
                else:
                    assert key in run["missing"][panel], (name, key)
    grpo = report["runs"]["grpo"]
    assert grpo["missing"]["schedule"] == ["schedule/percentile", "schedule/decay"]
    assert grpo["series"]["reward"]["eval/accuracy"]["step"] == [0, 5, 10]
    # time/step is key number len(FULL_KEYS) of that run: mean over steps 0..14 of i + step / 100
    step_time = report["runs"]["tp_schedule"]["table"]["mean step time (s)"]
    assert step_time == pytest.approx(len(FULL_KEYS) + 0.07)

    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and all(name in page for name in runs)


def test_one_run_defaults_to_its_dir_and_empty_runs_do_not_crash(tmp_path):
    fake_run(tmp_path / "a", 3, ["reward/mean"])
    assert cli(["report", str(tmp_path / "a")]) == 0
    assert png_size(tmp_path / "a" / "report.png")[0] >= 800
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert cli(["report", str(tmp_path / "empty"), str(tmp_path / "a"), "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["runs"]["empty"]["missing"]["reward"] == list(PANELS["reward"][2])


def test_run_without_metrics_is_an_error(tmp_path, capsys):
    os.makedirs(tmp_path / "nothing")
    assert cli(["report", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_staleness_histogram_counts_steps_per_staleness(tmp_path):
    os.makedirs(tmp_path / "k2")
    with open(tmp_path / "k2" / "metrics.jsonl", "w") as f:
        for step, stale in enumerate([0, 1, 2, 2, 2, 1, 2]):
            f.write(json.dumps({"step": step, "pipeline/staleness": float(stale)}) + "\n")
    assert cli(["report", str(tmp_path / "k2")]) == 0
    report = json.loads((tmp_path / "k2" / "report.json").read_text())
    assert report["runs"]["k2"]["staleness_histogram"] == {"0": 1, "1": 2, "2": 4}
