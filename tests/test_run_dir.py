"""One run per run directory: a second `rlvr train` into a used ``logging.run_dir`` is refused before
Ray starts unless it continues the run (``resume=auto``) or moves it aside (``--fresh``); a complete
run is not trained again; known errors (also from inside a Ray actor) reach the user as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import errors
from launch import train as train_cmd
from rlvr.data import DataError
from rlvr.loop import checkpoint
from rlvr.loop import run as run_mod
from rlvr.loop.signals import Interrupted

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs/quickstart_cpu.yaml")
METRICS = b'{"step": 0, "time": 1.5, "eval/accuracy": 0.25}\n{"step": 1, "time": 2.5, "reward/mean": 0.5}\n'


def used_run_dir(path: Path, steps=(2,)) -> Path:
    """A run dir as a killed or finished run leaves it: metrics rows and complete checkpoints."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "metrics.jsonl").write_bytes(METRICS)
    for step in steps:
        ckpt = path / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir()
        (ckpt / "driver.json").write_text(json.dumps({"step": step, "config": ""}))
    return path


@pytest.fixture
def started(monkeypatch):
    """Stands in for the run: records each config that would have started Ray."""
    calls = []
    monkeypatch.setattr(run_mod, "run", lambda cfg, classes: calls.append(cfg) or {})
    return calls


def train(*args, total=4):
    return train_cmd.main([QUICKSTART, f"schedule.total_steps={total}", *map(str, args)])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_used_run_dir_is_refused_and_left_byte_identical(tmp_path, started, capsys):
    run_dir = used_run_dir(tmp_path / "run")
    assert train(f"logging.run_dir={run_dir}") == 2
    msg = one_line(capsys)
    assert msg.startswith(f"rlvr train: RunDirError: logging.run_dir={run_dir} already holds a run "
                          "(metrics.jsonl, 1 checkpoint(s), newest step_000002)")
    assert "resume=auto" in msg and f"--fresh (moves it to {run_dir}.old-<timestamp>)" in msg
    assert (run_dir / "metrics.jsonl").read_bytes() == METRICS and started == []


def test_the_refusal_comes_before_ray_through_the_cli(tmp_path):
    run_dir = used_run_dir(tmp_path / "run")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-m", "launch.cli", "train", QUICKSTART, f"logging.run_dir={run_dir}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "already holds a run" in out.stderr and not (tmp_path / "ray").exists()
    assert (run_dir / "metrics.jsonl").read_bytes() == METRICS


@pytest.mark.parametrize("resume", ["auto", "checkpoints/step_000004"])
def test_resuming_a_complete_run_trains_nothing(tmp_path, started, capsys, resume):
    run_dir = used_run_dir(tmp_path / "run", steps=(2, 4))
    path = resume if resume == "auto" else run_dir / resume
    assert train(f"logging.run_dir={run_dir}", f"resume={path}", total=4) == 0
    out = capsys.readouterr().out
    assert f"run already complete: {run_dir}/checkpoints/step_000004 is step 4 of schedule.total_steps=4" in out
    assert started == [] and (run_dir / "metrics.jsonl").read_bytes() == METRICS


def test_resume_auto_continues_from_the_newest_complete_checkpoint(tmp_path, started):
    run_dir = used_run_dir(tmp_path / "run", steps=(2, 3))
    (run_dir / "checkpoints" / "step_000004.tmp").mkdir()  # a save cut short: never resumed from
    (run_dir / "checkpoints" / "step_000005").mkdir()  # no driver.json: not complete
    assert train(f"logging.run_dir={run_dir}", "resume=auto", total=8) == 0
    assert [run_mod.resume_path(cfg) for cfg in started] == [str(run_dir / "checkpoints" / "step_000003")]
    assert checkpoint.latest(str(run_dir)) == str(run_dir / "checkpoints" / "step_000003")


def test_resume_auto_without_a_checkpoint_starts_over_in_place(tmp_path, started, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes(METRICS)  # a run stopped before its first checkpoint
    assert train(f"logging.run_dir={run_dir}", "resume=auto") == 0
    assert f"resume=auto: no checkpoint in {run_dir}/checkpoints; starting at step 0" in capsys.readouterr().out
    assert len(started) == 1 and run_mod.resume_path(started[0]) is None


def test_fresh_moves_the_old_run_aside_and_deletes_nothing(tmp_path, started, capsys):
    run_dir = used_run_dir(tmp_path / "run")
    assert train(f"logging.run_dir={run_dir}", "--fresh") == 0
    [old] = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert (old / "metrics.jsonl").read_bytes() == METRICS and (old / "checkpoints" / "step_000002").is_dir()
    assert not run_dir.exists() and len(started) == 1
    assert f"--fresh: moved the earlier run to {old}" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["--fresh", "resume=auto"], "RunDirError: --fresh moves"),
    (["resume=/nonexistent/step_000002"], ("ConfigError: checkpoint.resume: checkpoint directory not found: "
                                           "/nonexistent/step_000002")),
    (["--frsh"], "unknown option --frsh"),
])
def test_contradictions_and_missing_checkpoints_fail_in_one_line(tmp_path, started, capsys, args, expected):
    run_dir = used_run_dir(tmp_path / "run")
    assert train(f"logging.run_dir={run_dir}", *args) == 2
    assert expected in one_line(capsys) and started == []


def test_a_directory_that_is_not_a_checkpoint_is_named(tmp_path, started, capsys):
    (tmp_path / "not_a_ckpt").mkdir()
    assert train(f"logging.run_dir={tmp_path / 'new'}", f"resume={tmp_path / 'not_a_ckpt'}") == 2
    assert one_line(capsys) == (f"rlvr train: CheckpointError: not a complete rlvr checkpoint (no driver.json): "
                                f"{tmp_path / 'not_a_ckpt'}")


def test_another_runs_checkpoint_does_not_continue_into_a_used_run_dir(tmp_path, started, capsys):
    other = used_run_dir(tmp_path / "other")
    run_dir = used_run_dir(tmp_path / "run")
    assert train(f"logging.run_dir={run_dir}", f"resume={other}/checkpoints/step_000002") == 2
    assert "is not one of its checkpoints" in one_line(capsys) and started == []
    assert train(f"logging.run_dir={tmp_path / 'empty'}", f"resume={other}/checkpoints/step_000002") == 0
    assert len(started) == 1  # an unused run dir may start from any run's checkpoint


# --------------------------------------------------------------------------- errors from anywhere, in one line
def _ray_wrapped(exc):
    import ray

    return ray.exceptions.RayTaskError("TrainerWorker.load", "remote traceback\n  ...", exc).as_instanceof_cause()


@pytest.mark.parametrize("debug", [False, True])
def test_an_error_raised_in_an_actor_is_unwrapped_to_one_line(tmp_path, monkeypatch, capsys, debug):
    def failing_run(cfg, classes):
        raise _ray_wrapped(DataError("train.jsonl row 7: field 'answer': missing"))

    monkeypatch.setattr(run_mod, "run", failing_run)
    monkeypatch.setenv("RLVR_DEBUG", "1" if debug else "0")
    assert train(f"logging.run_dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "rlvr train: DataError: train.jsonl row 7: field 'answer': missing"
    assert ("Traceback (most recent call last)" in err) == debug


def test_a_dead_actor_is_a_run_failure_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.setattr(run_mod, "run", lambda cfg, classes: (_ for _ in ()).throw(
        ray.exceptions.RayActorError(error_msg="The actor died unexpectedly.\n\tclass_name: TrainerWorker")))
    assert train(f"logging.run_dir={tmp_path / 'a'}") == 1
    assert one_line(capsys) == ("rlvr train: RayActorError: The actor died unexpectedly. "
                                "(--debug or RLVR_DEBUG=1 for the traceback)")
    monkeypatch.setattr(run_mod, "run", lambda cfg, classes: {}["bug"])
    with pytest.raises(KeyError):
        train(f"logging.run_dir={tmp_path / 'b'}")
    assert errors.debug_flag(["x.yaml", "--debug"]) == (["x.yaml"], True)


def test_an_interrupted_run_prints_the_command_that_resumes_it(tmp_path, monkeypatch, capsys):
    ckpt = f"{tmp_path}/run/checkpoints/step_000005"

    def stopped(cfg, classes):
        raise Interrupted(15, 5, ckpt)

    monkeypatch.setattr(run_mod, "run", stopped)
    assert train(f"logging.run_dir={tmp_path / 'run'}") == 143
    assert one_line(capsys) == (f"[rlvr] stopped after step 5; checkpoint {ckpt}. Resume with: rlvr train "
                                f"{QUICKSTART} schedule.total_steps=4 logging.run_dir={tmp_path / 'run'} "
                                f"resume={ckpt}")


def _checkpoint_with_config(run_dir: Path, step: int, model_path: str) -> Path:
    from rlvr.config import load_config, to_yaml

    tmp = checkpoint.begin(str(run_dir), step)
    return Path(checkpoint.commit(tmp, {"step": step, "config": to_yaml(load_config([], [f"model.path={model_path}"]))},
                                  keep=0))


def test_resume_auto_skips_a_corrupt_newest_checkpoint_naming_it(tmp_path, caplog):
    run_dir = tmp_path / "run"
    good = _checkpoint_with_config(run_dir, 2, "tiny")
    bad = _checkpoint_with_config(run_dir, 4, "tiny")
    (bad / "driver.json").write_text("{torn")
    assert checkpoint.latest(str(run_dir)) == str(good)
    assert f"skipping a corrupt checkpoint: {bad}/driver.json" in caplog.text
    caplog.clear()
    assert checkpoint.latest(str(run_dir)) == str(good)  # looked up again (run dir check, then build): said once
    assert "corrupt" not in caplog.text


def test_resume_auto_refuses_another_model_naming_both(tmp_path, started, capsys):
    run_dir = tmp_path / "run"
    ckpt = _checkpoint_with_config(run_dir, 2, "tiny")
    other = tmp_path / "other_model"
    other.mkdir()
    assert train(f"logging.run_dir={run_dir}", "resume=auto", f"model.path={other}") == 2
    msg = one_line(capsys)
    assert f"resume=auto would continue {ckpt}, trained from model.path=tiny, with model.path={other}" in msg
    assert started == []
