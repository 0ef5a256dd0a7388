"""MetricsLogger sinks, resume, the console line, and the progress wrapper."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys

import numpy as np
import pytest

from rlvr.config import LoggingConfig
from rlvr.loop.metrics import MetricsLogger, format_line, merge_steps, read_metrics
from rlvr.loop.progress import progress

JSONL_ONLY = LoggingConfig(tensorboard=False, wandb=False, mlflow=False, progress=False)


def steps(run_dir):
    return [row["step"] for row in read_metrics(os.path.join(run_dir, "metrics.jsonl"))]


def test_jsonl_rows_are_flushed_and_non_finite_becomes_null(tmp_path):
    logger = MetricsLogger(JSONL_ONLY, str(tmp_path))
    logger.log(0, {"reward/mean": 0.25, "train/accuracy": float("nan"), "perf/tokens_per_s": np.float32(8.0),
                   "note": "text", "count": 7, "policy/entropy": float("inf")})
    # Read before close: a killed run keeps every logged step.
    (row,) = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert row["step"] == 0 and isinstance(row["time"], float)
    assert row["reward/mean"] == 0.25 and row["perf/tokens_per_s"] == 8.0 and row["count"] == 7
    assert row["train/accuracy"] is None and row["note"] is None and row["policy/entropy"] is None
    logger.close()


def test_resume_drops_steps_at_or_after_resume_step(tmp_path):
    with MetricsLogger(JSONL_ONLY, str(tmp_path)) as logger:
        for step in range(5):
            logger.log(step, {"reward/mean": step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "rew')  # a run killed mid-write
    with MetricsLogger(JSONL_ONLY, str(tmp_path), resume_step=3) as logger:
        for step in (3, 4, 5):
            logger.log(step, {"reward/mean": 10 + step})
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["reward/mean"] for r in rows] == [0, 1, 2, 13, 14, 15]


def test_torn_tail_is_cut_before_appending(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write('{"step": 0, "reward/mean": 1}\n{"step": 1, "rew')
    with MetricsLogger(JSONL_ONLY, str(tmp_path)) as logger:
        logger.log(1, {"reward/mean": 2})
    assert steps(str(tmp_path)) == [0, 1]


def test_merge_steps_joins_rows_of_one_step():
    rows = [{"step": 1, "a": 1}, {"step": 0, "a": 0}, {"step": 1, "eval/accuracy": 0.5}]
    assert merge_steps(rows) == [{"step": 0, "a": 0}, {"step": 1, "a": 1, "eval/accuracy": 0.5}]


def _tb_scalars(tb_dir, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(key)] if key in acc.Tags()["scalars"] else []


def test_tensorboard_skips_non_finite_warns_once_and_purges_on_resume(tmp_path, caplog):
    cfg = LoggingConfig(tensorboard=True)
    with caplog.at_level(logging.WARNING, logger="rlvr.loop.metrics"):
        with MetricsLogger(cfg, str(tmp_path), {"name": "t"}) as logger:
            for step in range(4):
                logger.log(step, {"reward/mean": step / 4, "policy/entropy": float("nan")})
    assert sum("policy/entropy" in r.message for r in caplog.records) == 1
    tb = str(tmp_path / "tb")
    assert _tb_scalars(tb, "reward/mean") == [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)]
    assert _tb_scalars(tb, "policy/entropy") == []
    with MetricsLogger(cfg, str(tmp_path), resume_step=2) as logger:
        logger.log(2, {"reward/mean": 1.0})
    assert _tb_scalars(tb, "reward/mean") == [(0, 0.0), (1, 0.25), (2, 1.0)]


def test_missing_tracker_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"rlvr\[tracking\]"):
        MetricsLogger(LoggingConfig(tensorboard=False, wandb=True), str(tmp_path))


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLogger(LoggingConfig(tensorboard=False, wandb=True), str(tmp_path), {"lr": 1e-5}) as logger:
        logger.log(0, {"reward/mean": 0.5, "train/accuracy": float("nan")})
    assert any(p.startswith("offline-run-") for p in os.listdir(tmp_path / "wandb"))


def test_mlflow_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    with MetricsLogger(LoggingConfig(tensorboard=False, mlflow=True), str(tmp_path), {"lr": 1e-5}) as logger:
        for step in range(3):
            logger.log(step, {"reward/mean": step / 2, "x": None})
        run_id = logger.trackers[0].run_id
    client = MlflowClient(tracking_uri="file://" + str(tmp_path / "mlruns"))
    history = client.get_metric_history(run_id, "reward/mean")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 0.5), (2, 1.0)]


def test_format_line():
    metrics = {"reward/mean": 0.3123, "train/accuracy": 0.5, "schedule/percentile": 0.99, "time/step": 1.234,
               "train/loss": 3.0}
    assert format_line(3, 10, metrics) == "step 3/10 reward=0.312 acc=0.500 pct=0.990 t=1.2s"
    assert format_line(1, 2, {"train/accuracy": float("nan")}) == "step 1/2 reward=nan"


# --------------------------------------------------------------------------- progress
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_plain_lines_are_rate_bounded():
    out = io.StringIO()
    bar = progress(100, "gen", stream=out, every_pct=25, every_s=1e9)
    for i in range(100):
        bar.set_postfix(reward=i / 100)
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "gen: 25/100 (25%)", "gen: 50/100 (50%)", "gen: 75/100 (75%)", "gen: 100/100 (100%)"]
    assert lines[-1].endswith("reward=0.99")


def test_progress_iterable_unknown_total_prints_final_line_only():
    out = io.StringIO()
    items = list(progress(iter(range(7)), "eval", stream=out, every_s=1e9))
    assert items == list(range(7))
    assert out.getvalue().startswith("eval: 7 [")
    assert len(out.getvalue().splitlines()) == 1


def test_progress_disabled_and_tty():
    out = io.StringIO()
    assert list(progress([1, 2, 3], "train", enabled=False, stream=out)) == [1, 2, 3]
    assert out.getvalue() == ""
    tty = _Tty()
    with progress(4, "train", stream=tty) as bar:
        bar.update(4)
        bar.write("step 4/4 reward=1.000")
    assert "train" in tty.getvalue() and "step 4/4 reward=1.000" in tty.getvalue()
    assert math.isclose(bar.n, 4)
    json.dumps(bar.postfix)  # postfix stays plain data
