"""``trainer.engine=deepspeed``: ZeRO-1/2/3 over 2 gloo ranks train like the FSDP2 ``Trainer``.

Setup: the tiny checkpoint, 16 random ragged samples, fixed advantages and the fp32 initial model's
``old_logprob``, 3 AdamW steps at lr 1e-3 on that one batch (ratios move, so the PPO clip and grad
clipping at 1.0 are exercised); the reference is one unsharded FSDP2 ``Trainer`` process on all
micro-batches, the DeepSpeed ranks each get half (``plan_micro_batches`` over 2 ranks), same
denominators.  DeepSpeed runs in spawned processes (its comm layer and ZeRO hooks are per process).

Tolerances (float32), with the values measured when they were set: parameters 1e-5 absolute of the
reference after 3 steps (measured 1.6e-6 ZeRO-1, 1.5e-6 ZeRO-2, 3.5e-6 ZeRO-3; the steps moved them
3e-3), loss and grad norm 1e-5 relative.  Exact (``torch.equal``):
a trainer resumed from a checkpoint repeats the next step's loss, grad norm and parameters; the
exported weights equal the fp32 master weights that DeepSpeed's offline converter reads from the
checkpoint; the KL reference's log-probs equal the policy's before the update and stay put after it.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

from helpers import random_samples
from rlvr.config import ConfigError, DeepSpeedConfig, LossConfig, TrainerConfig, load_config
from rlvr.train.batching import pack, pad_responses, plan_micro_batches

LR, STEPS, BUDGET, NORM_LEN = 1e-3, 3, 48, 16
PARAM_TOL, REL_TOL = 1e-5, 1e-5
STAGES = (1, 2, 3)


# --------------------------------------------------------------------------- config and registry (fast)
def test_engine_registry_matches_the_config():
    from rlvr import config
    from rlvr.train.engines import TRAINER_ENGINES
    from rlvr.train.trainer import Trainer

    assert TRAINER_ENGINES.names() == config.TRAINER_ENGINES == ("fsdp2", "deepspeed")
    assert TRAINER_ENGINES.get("fsdp2") is Trainer
    with pytest.raises(ValueError, match="unknown trainer.engine 'x'; valid choices: fsdp2, deepspeed"):
        TRAINER_ENGINES.get("x")


def test_deepspeed_config_rules():
    zero3 = {"zero_stage": 3, "offload_params": "cpu", "offload_optimizer": "cpu", "optimizer": "cpu_adam"}
    overrides = ["trainer.engine=deepspeed", *(f"trainer.deepspeed.{k}={v}" for k, v in zero3.items())]
    ok = load_config(overrides=overrides)
    assert (ok.trainer.engine, ok.trainer.deepspeed.zero_stage) == ("deepspeed", 3)
    bad = {
        "trainer.deepspeed.offload_params=cpu": "offload_params=cpu needs trainer.deepspeed.zero_stage=3",
        "trainer.deepspeed.offload_optimizer=cpu": "set trainer.deepspeed.optimizer=cpu_adam",
        "trainer.deepspeed.zero_stage=4": "zero_stage' = 4 must be in \\[1, 3\\]",
        "trainer.deepspeed.optimizer=lamb": "valid choices: torch_adamw, cpu_adam, fused_adam",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=["trainer.engine=deepspeed", override])
    gpu = ["trainer.engine=deepspeed", "trainer.num_gpus=1", "trainer.deepspeed.optimizer=cpu_adam"]
    with pytest.raises(ConfigError, match="cpu_adam on GPU trainers needs"):
        load_config(overrides=gpu)
    # the section is only read with engine=deepspeed
    assert load_config(overrides=["trainer.deepspeed.offload_params=cpu"]).trainer.engine == "fsdp2"


def test_ds_config_carries_the_trainer_settings():
    pytest.importorskip("deepspeed")
    from rlvr.train.deepspeed_trainer import OPTIMIZERS, ds_config

    zero3 = DeepSpeedConfig(zero_stage=3, offload_params="cpu", offload_optimizer="cpu")
    cfg = TrainerConfig(grad_clip=0.5, dtype="bfloat16", deepspeed=zero3)
    ds = ds_config(cfg)
    assert ds["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"},
                                       "offload_optimizer": {"device": "cpu"}}
    assert ds["gradient_clipping"] == 0.5
    assert (ds["bf16"], ds["communication_data_type"]) == ({"enabled": True}, "fp32")
    assert ds["managed_gradient_accumulation"] is False
    default = ds_config(TrainerConfig())
    assert default["zero_optimization"] == {"stage": 2} and default["bf16"] == {"enabled": False}
    assert OPTIMIZERS.names() == ("torch_adamw", "cpu_adam", "fused_adam")
    param = torch.nn.Parameter(torch.ones(2))
    adamw = OPTIMIZERS.get("torch_adamw")(TrainerConfig(lr=3e-4, betas=[0.8, 0.9], weight_decay=0.1))([param])
    group = adamw.param_groups[0]
    assert type(adamw) is torch.optim.AdamW
    assert (group["lr"], group["betas"], group["weight_decay"]) == (3e-4, (0.8, 0.9), 0.1)


# --------------------------------------------------------------------------- 2 ranks against FSDP2 (slow)
def _batch():
    samples = random_samples(16, seed=5)
    _, mask = pad_responses(samples)
    g = torch.Generator().manual_seed(0)
    adv = (torch.randn(len(samples), 1, generator=g) * mask).contiguous()
    return samples, {"advantages": adv, "token_weight": mask.float()}


def _reference(ckpt, samples, fields):
    """The FSDP2 Trainer, unsharded: initial old_logprob, then STEPS steps on every micro-batch."""
    from rlvr.train.trainer import Trainer

    trainer = Trainer(ckpt, TrainerConfig(lr=LR, micro_batch_tokens=BUDGET))
    plan = plan_micro_batches(samples, 1, BUDGET)[0]
    old = torch.zeros(fields["token_weight"].shape)
    for index, lp, _ in trainer.compute_stats([pack(samples, ix) for ix in plan]):
        old[torch.tensor(index), : lp.shape[1]] = lp
    fields = {**fields, "old_logprob": old}
    denom = float(fields["token_weight"].sum())
    mbs = [pack(samples, ix).with_fields(**fields) for ix in plan]
    start = trainer.full_state_dict()
    start = {k: v.clone() for k, v in start.items()}  # unsharded: views of the live parameters
    metrics = [trainer.train_step([mbs], LossConfig(), [denom], NORM_LEN) for _ in range(STEPS)]
    return fields, denom, metrics, start, trainer.full_state_dict()


def _ranks_worker(rank, port, ckpt, out, samples, fields, denom):
    """One DeepSpeed rank: for each ZeRO stage, train STEPS steps (saving before the last), resume a fresh
    trainer from that checkpoint and repeat the last step, export, save the final state."""
    torch.set_num_threads(1)
    from rlvr.train.deepspeed_trainer import DeepSpeedTrainer
    from rlvr.train.parallel import init_distributed

    mesh = init_distributed(rank, 2, "127.0.0.1", port, "gloo")
    plan = plan_micro_batches(samples, 2, BUDGET)[rank]
    mbs = [pack(samples, ix).with_fields(**fields) for ix in plan]
    results = {}
    for stage in STAGES:
        cfg = TrainerConfig(lr=LR, micro_batch_tokens=BUDGET, engine="deepspeed",
                            deepspeed=DeepSpeedConfig(zero_stage=stage))
        t0 = time.perf_counter()
        trainer = DeepSpeedTrainer(ckpt, cfg, mesh=mesh, reference=True)
        stats0 = trainer.compute_stats([pack(samples, ix) for ix in plan])
        metrics, step_s = [], []
        for step in range(STEPS):
            if step == STEPS - 1:
                trainer.save(os.path.join(out, f"stage{stage}_step{step}"))
            t = time.perf_counter()
            metrics.append(trainer.train_step([mbs], LossConfig(), [denom], NORM_LEN))
            step_s.append(time.perf_counter() - t)
        stats1 = trainer.compute_stats([pack(samples, ix) for ix in plan])
        t = time.perf_counter()
        sd = trainer.full_state_dict()
        export_s = time.perf_counter() - t
        trainer.save(os.path.join(out, f"stage{stage}_final"))
        resumed = DeepSpeedTrainer(ckpt, cfg, mesh=mesh)
        resumed.load(os.path.join(out, f"stage{stage}_step{STEPS - 1}"))
        resumed_metrics = resumed.train_step([mbs], LossConfig(), [denom], NORM_LEN)
        results[stage] = {"metrics": metrics, "sd": sd, "resumed_metrics": resumed_metrics,
                          "resumed_sd": resumed.full_state_dict(), "stats0": stats0, "stats1": stats1,
                          "lr": resumed.lr_scheduler.get_last_lr()[0], "steps": resumed.optimizer_steps,
                          "n_micro": len(plan), "setup_s": t0, "step_s": step_s, "export_s": export_s}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(ckpt, tmp_path_factory):
    """Reference (FSDP2, 1 process) and the 2 DeepSpeed ranks' results for every ZeRO stage."""
    pytest.importorskip("deepspeed")
    import torch.multiprocessing as mp

    samples, fields = _batch()
    fields, denom, ref_metrics, start_sd, ref_sd = _reference(ckpt, samples, fields)
    out = str(tmp_path_factory.mktemp("ds"))
    start = time.perf_counter()
    mp.spawn(_ranks_worker, args=(_free_port(), ckpt, out, samples, fields, denom), nprocs=2, join=True)
    print(f"2 DeepSpeed ranks, stages {STAGES}: {time.perf_counter() - start:.1f} s")
    ranks = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    return {"ref_metrics": ref_metrics, "start_sd": start_sd, "ref_sd": ref_sd, "ranks": ranks, "out": out}


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_zero_matches_fsdp2(two_ranks, stage):
    ref_sd, rank0, rank1 = two_ranks["ref_sd"], two_ranks["ranks"][0][stage], two_ranks["ranks"][1][stage]
    assert rank0["n_micro"] == rank1["n_micro"] >= 2  # really sharded and micro-batched
    assert rank1["sd"] is None and set(rank0["sd"]) == set(ref_sd)
    for ref, m0, m1 in zip(two_ranks["ref_metrics"], rank0["metrics"], rank1["metrics"]):
        for key in ("train/loss", "train/grad_norm", "loss/clip_frac_high", "policy/entropy"):
            assert m0[key] == m1[key] == pytest.approx(ref[key], rel=REL_TOL, abs=1e-7), key
    assert two_ranks["ref_metrics"][0]["train/grad_norm"] > 1.0  # grad clipping at 1.0 did act
    worst = max(float((rank0["sd"][k] - ref_sd[k]).abs().max()) for k in ref_sd)
    moved = max(float((ref_sd[k] - two_ranks["start_sd"][k]).abs().max()) for k in ref_sd)
    print(f"ZeRO-{stage}: max |param - FSDP2| {worst:.2e} (moved {moved:.2e}), steps {rank0['step_s']} s, "
          f"full_state_dict {rank0['export_s'] * 1e3:.1f} ms")
    assert worst <= PARAM_TOL < moved, (worst, moved)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_resume_repeats_the_next_step_exactly(two_ranks, stage):
    for rank in two_ranks["ranks"]:
        last, resumed = rank[stage]["metrics"][-1], rank[stage]["resumed_metrics"]
        assert {k: v for k, v in resumed.items() if not k.startswith("time/")} == \
            {k: v for k, v in last.items() if not k.startswith("time/")}
        assert rank[stage]["steps"] == STEPS
    sd, resumed = two_ranks["ranks"][0][stage]["sd"], two_ranks["ranks"][0][stage]["resumed_sd"]
    assert all(torch.equal(sd[k], resumed[k]) for k in sd)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_exported_weights_are_the_checkpointed_master_weights(two_ranks, stage):
    from rlvr.train.deepspeed_trainer import hf_state_dict, is_checkpoint

    path = os.path.join(two_ranks["out"], f"stage{stage}_final")
    assert is_checkpoint(path) and not is_checkpoint(two_ranks["out"])
    offline, sd = hf_state_dict(path), two_ranks["ranks"][0][stage]["sd"]
    assert set(offline) == set(sd)
    assert all(torch.equal(offline[k], sd[k]) for k in sd)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_kl_reference_is_the_frozen_start(two_ranks, stage):
    for rank in two_ranks["ranks"]:
        for (i0, lp0, _, ref0), (i1, lp1, _, ref1) in zip(rank[stage]["stats0"], rank[stage]["stats1"]):
            assert i0 == i1 and torch.equal(ref0, lp0) and torch.equal(ref1, ref0)
            assert float((lp1 - lp0).abs().max()) > 1e-4  # the policy moved


# --------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_quickstart_trains_with_deepspeed(tmp_path):
    """The CLI run with ``trainer.engine=deepspeed`` (ZeRO-2, 2 trainer ranks): 3 metric rows, a DeepSpeed
    checkpoint whose fp32 weights fit the model, and no per-step deprecation warning in the log."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("deepspeed")
    from rlvr.loop.checkpoint import _base_model, latest, saved_config
    from rlvr.loop.metrics import merge_steps, read_metrics
    from rlvr.train.deepspeed_trainer import hf_state_dict, is_checkpoint

    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "launch.cli", "train", "configs/quickstart_cpu.yaml",
           "trainer.engine=deepspeed", "schedule.total_steps=3", f"logging.run_dir={run_dir}",
           "logging.progress=false"]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    rows = merge_steps(read_metrics(os.path.join(run_dir, "metrics.jsonl")))
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert all(r["train/grad_norm"] > 0 for r in train_rows)
    assert "all_gather_into_tensor" not in out.stderr + out.stdout
    ckpt = latest(run_dir)
    assert ckpt is not None and is_checkpoint(ckpt)
    model, _ = _base_model(saved_config(ckpt))
    weights = hf_state_dict(ckpt)
    expected = model.state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    model.load_state_dict(weights)
    # `rlvr eval` serves it: the consolidated HF directory holds exactly those weights
    from safetensors.torch import load_file

    from rlvr.loop.checkpoint import resolve_checkpoint

    served = load_file(os.path.join(resolve_checkpoint(ckpt, None), "model.safetensors"))
    assert served and all(torch.equal(served[k], weights[k]) for k in served)
