"""A lost trainer rank is recovered inside the run: the group is rebuilt from the last checkpoint (or from
step 0 when there is none), the lost steps are trained again, their metrics rows replaced, and the run
ends with exactly the parameters of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from rlvr.config import PoolConfig, load_config
from rlvr.loop.recovery import Recovery, waiting_for

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


# --------------------------------------------------------------------------- pure parts
class _Trainers:
    def __init__(self, dead):
        self.dead = dead

    def dead_ranks(self):
        return self.dead


def test_recovery_counts_redone_steps_and_spends_its_budget(capsys):
    rec = Recovery(max_recoveries=1)
    assert rec.lost_ranks(_Trainers([])) == []  # a failure that is not a lost rank: not recovered
    assert rec.lost_ranks(object()) == []  # no trainer group to ask (fake pools)
    rec.saved("/run/checkpoints/step_000003", 3)
    restored = []
    assert rec.recover([1], 4, lambda path: restored.append(path) or 3) == 3  # died during step 5
    assert restored == ["/run/checkpoints/step_000003"]
    fields = rec.take_fields()
    assert fields["recovery/count"] == 1.0 and fields["recovery/steps_redone"] == 2.0  # steps 4 and 5
    assert fields["recovery/seconds_lost"] >= 0 and rec.take_fields() == {}  # only on the first row after
    assert "trainer rank(s) 1 died during step 5: recovery 1/1" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="max_recoveries=1"):
        rec.lost_ranks(_Trainers([0]))


def test_recovery_without_a_checkpoint_goes_back_to_step_0(capsys):
    rec = Recovery(max_recoveries=3)
    assert rec.recover([0], 1, lambda path: 0 if path is None else 99) == 0
    assert rec.take_fields()["recovery/steps_redone"] == 2.0
    assert "from the initial weights (no checkpoint yet" in capsys.readouterr().err


def test_waiting_for_names_the_pool_label_and_resources():
    pool = PoolConfig(num_cpus=0.5, label_selector={"rlvr.io/pool": "rollout"})
    expected = "rollout pool: waiting for a node with rlvr.io/pool=rollout and 0.5 CPU"
    assert waiting_for("rollout", pool) == expected
    gpu = PoolConfig(num_cpus=4, num_gpus=1, resources={"a100": 1})
    assert waiting_for("trainer", gpu) == "trainer pool: waiting for a node with 4 CPU, 1 GPU, 1 a100"


# --------------------------------------------------------------------------- end to end
def _cfg(run_dir, *extra):
    return load_config([str(ROOT / "configs/quickstart_cpu.yaml")], [
        f"logging.run_dir={run_dir}", f"schedule.total_steps={STEPS}", "logging.progress=false",
        "logging.tensorboard=false", "eval.num_prompts=8", "checkpoint.every=1", *extra])


def _rows(run_dir):
    from rlvr.loop.metrics import read_metrics

    path = os.path.join(run_dir, "metrics.jsonl")
    return read_metrics(path) if os.path.exists(path) else []


def _params(ckpt_dir):  # as tests/test_e2e.py: the trainers' DCP state as one torch file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = os.path.join(ckpt_dir, "..", f"{os.path.basename(ckpt_dir)}.pt")
    dcp_to_torch_save(os.path.join(ckpt_dir, "trainer"), out)
    return torch.load(out, weights_only=False)["model"]


@pytest.fixture
def trainer_pids(monkeypatch):
    """The pids of every trainer group created, rank by rank (read while the ranks are idle)."""
    import ray

    from rlvr.loop import groups

    created, original = [], groups.TrainerGroup.create.__func__

    def create(cls, *args, **kwargs):
        group = original(cls, *args, **kwargs)
        created.append(ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in group.actors]))
        return group

    monkeypatch.setattr(groups.TrainerGroup, "create", classmethod(create))
    return created


def _kill_rank_at(run_dir, step, pids, rank=1):
    """SIGKILL trainer ``rank`` of the first group once metrics.jsonl shows ``step``."""
    def watch():
        deadline = time.monotonic() + 300
        while step not in [row["step"] for row in _rows(run_dir)] and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pids[0][rank], signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from rlvr.loop.run import run
    from workers import ACTORS

    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    run(_cfg(run_dir), ACTORS)
    return _params(os.path.join(run_dir, "checkpoints", f"step_{STEPS:06d}"))


def _run_killed(run_dir, at_step, pids, *extra):
    from rlvr.loop.run import run
    from workers import ACTORS

    killer = _kill_rank_at(run_dir, at_step, pids)
    summary = run(_cfg(run_dir, *extra), ACTORS)
    killer.join(timeout=1)
    return summary


def _same(pa, pb):
    return set(pa) == set(pb) and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.mark.slow
def test_a_killed_trainer_rank_is_recovered_from_the_last_checkpoint_bit_exact(reference, tmp_path,
                                                                                trainer_pids, capfd):
    run_dir = str(tmp_path / "killed")
    _run_killed(run_dir, 3, trainer_pids)
    out = capfd.readouterr()
    assert len(trainer_pids) == 2 and not set(trainer_pids[0]) & set(trainer_pids[1])  # a new group
    assert "trainer rank(s) 1 died during step" in out.err and "recovery 1/3" in out.err
    rows = _rows(run_dir)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))  # each step once: the lost rows replaced
    redone = [row for row in rows if "recovery/count" in row]
    assert len(redone) == 1 and redone[0]["recovery/count"] == 1.0
    assert redone[0]["recovery/steps_redone"] >= 1 and redone[0]["recovery/seconds_lost"] > 0
    assert f"resumed from {run_dir}/checkpoints/step_00000" in out.out
    assert _same(reference, _params(os.path.join(run_dir, "checkpoints", f"step_{STEPS:06d}")))


@pytest.mark.slow
def test_without_a_checkpoint_the_run_restarts_from_step_0_bit_exact(reference, tmp_path, trainer_pids,
                                                                      capfd):
    run_dir = str(tmp_path / "no_checkpoint")
    _run_killed(run_dir, 2, trainer_pids, "checkpoint.every=0")
    out = capfd.readouterr()
    assert "from the initial weights (no checkpoint yet" in out.err
    rows = _rows(run_dir)
    assert [row["step"] for row in rows] == list(range(STEPS + 1))
    redone = [row for row in rows if "recovery/count" in row]
    assert len(redone) == 1 and redone[0]["step"] == 1 and redone[0]["recovery/steps_redone"] >= 3
    assert _same(reference, _params(os.path.join(run_dir, "checkpoints", f"step_{STEPS:06d}")))
