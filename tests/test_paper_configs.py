"""configs/paper/: the authors' TP-Schedule recipe (arXiv 2605.25381) as our configs.

The authors' values are written here literally, copied from their scripts in
github.com/Jinghaoleven/RLVR-Schedule (examples/grpo_trainer/run_schedule_{4b,8b}.sh) or, where a
script leaves a knob to verl, from the fork's verl/trainer/config defaults; each is compared with
the config key it became, on the config merged as it is submitted (on configs/cluster_8xh100.yaml).
"""

from __future__ import annotations

import re
from functools import reduce
from pathlib import Path

import pytest

from rlvr.config import ConfigError, RLConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "configs/cluster_8xh100.yaml"
PAPER = {
    "tp4b": ROOT / "configs/paper/tp_schedule_qwen3_4b.yaml",
    "tp8b": ROOT / "configs/paper/tp_schedule_qwen3_8b.yaml",
    "grpo4b": ROOT / "configs/paper/grpo_qwen3_4b.yaml",
    "gspo4b": ROOT / "configs/paper/tp_schedule_gspo_qwen3_4b.yaml",
}
STEPS = ["schedule.total_steps=120"]  # the recipe leaves it to the training file (total_epochs=1)

# Shared by run_schedule_4b.sh and run_schedule_8b.sh: (script flag, authors' value, our key).
SHARED = [
    ("data.train_batch_size", 256, "data.prompts_per_step"),
    ("actor_rollout_ref.rollout.n", 8, "algorithm.group_size"),
    ("data.max_response_length", 39936, "rollout.max_tokens"),
    ("data.max_prompt_length + data.max_response_length", 1024 + 39936, "rollout.max_model_len"),
    ("actor_rollout_ref.rollout.temperature", 1.2, "rollout.temperature"),
    ("actor_rollout_ref.rollout.top_p", 1.0, "rollout.top_p"),
    ("actor_rollout_ref.actor.optim.lr", 1e-6, "trainer.lr"),
    ("actor_rollout_ref.model.enable_gradient_checkpointing", True, "trainer.activation_checkpointing"),
    ("actor_rollout_ref.model.use_remove_padding", True, "trainer.packing"),
    ("algorithm.adv_estimator", "grpo", "algorithm.advantage"),
    ("actor_rollout_ref.actor.kl_loss_coef", 0, "algorithm.loss.kl_coef"),
    # verl defaults the scripts rely on (the fork's verl/trainer/config/...):
    ("optim/fsdp.yaml weight_decay", 0.01, "trainer.weight_decay"),
    ("optim/fsdp.yaml betas", [0.9, 0.999], "trainer.betas"),
    ("optim/fsdp.yaml lr_warmup_steps_ratio", 0, "trainer.warmup_steps"),
    ("actor/dp_actor.yaml grad_clip", 1.0, "trainer.grad_clip"),
    ("core_algos.compute_grpo_outcome_advantage epsilon", 1e-6, "algorithm.advantage_eps"),
    ("rollout/rollout.yaml val_kwargs.temperature", 0, "eval.temperature"),
]
# The PPO-loss and schedule flags of the TP-Schedule scripts (and, for the loss, the GRPO baseline).
PPO_LOSS = [
    ("actor_rollout_ref.actor.clip_ratio_low", 0.2, "algorithm.loss.clip_low"),
    ("actor_rollout_ref.actor.clip_ratio_high", 0.28, "algorithm.loss.clip_high"),
    ("actor/actor.yaml clip_ratio_c", 3.0, "algorithm.loss.dual_clip"),
    ("actor_rollout_ref.actor.loss_agg_mode", "token_mean", "algorithm.loss.agg"),  # token-mean
    ("actor.policy_loss.loss_mode", "ppo", "algorithm.loss.name"),  # vanilla
]
TP_SCHEDULE = [
    ("data.schedule_strategy", "position", "algorithm.credit.criterion"),  # tp_schedule
    ("data.schedule_mode", "linear", "schedule.percentile.kind"),
    ("data.initial_schedule_magnitude", 0.99, "schedule.percentile.magnitude"),
    ("data.min_schedule_ratio", 0, "schedule.percentile.start_ratio"),
    ("data.max_schedule_ratio", 0.8, "schedule.percentile.end_ratio"),
    ("linear_ratio(...) at progress 1", 0.0, "schedule.percentile.end"),
    ("tp_schedule: prefix moved into the prompt", 0.0, "schedule.decay.magnitude"),
]
TABLES = {
    "tp4b": SHARED + PPO_LOSS + TP_SCHEDULE + [  # run_schedule_4b.sh
        ("MODEL_PATH", "Qwen3-4B", "model.path"),
        ("trainer.test_freq", 25, "eval.every"),
        ("trainer.save_freq", 25, "checkpoint.every"),
    ],
    "tp8b": SHARED + PPO_LOSS + TP_SCHEDULE + [  # run_schedule_8b.sh
        ("MODEL_PATH", "Qwen3-8B", "model.path"),
        ("trainer.test_freq", 300, "eval.every"),
        ("trainer.save_freq", 25, "checkpoint.every"),
    ],
    "grpo4b": SHARED + PPO_LOSS + [  # run_schedule_4b.sh without data.schedule_strategy
        ("MODEL_PATH", "Qwen3-4B", "model.path"),
        ("data.schedule_strategy (null)", "none", "algorithm.credit.criterion"),
        ("data.schedule_strategy (null)", 0.0, "schedule.percentile.magnitude"),
        ("data.schedule_strategy (null)", 1.0, "schedule.decay.magnitude"),
    ],
    "gspo4b": SHARED + TP_SCHEDULE + [  # run_schedule_4b.sh with verl's GSPO loss
        ("MODEL_PATH", "Qwen3-4B", "model.path"),
        ("actor.policy_loss.loss_mode", "gspo", "algorithm.loss.name"),
        ("GSPO clip_ratio_low", 3e-4, "algorithm.loss.clip_low"),
        ("GSPO clip_ratio_high", 4e-4, "algorithm.loss.clip_high"),
        ("compute_policy_loss_gspo: no clip_ratio_c", None, "algorithm.loss.dual_clip"),
        ("compute_policy_loss_gspo loss_agg_mode", "seq_mean_token_mean", "algorithm.loss.agg"),
    ],
}


def load(name: str, overrides=STEPS) -> RLConfig:
    return load_config([str(CLUSTER), str(PAPER[name])], list(overrides))


def get(cfg: RLConfig, key: str):
    return reduce(getattr, key.split("."), cfg)


@pytest.mark.parametrize("name", PAPER)
def test_each_paper_config_loads_and_validates(name):
    cfg = load(name)
    assert cfg.name == f"paper_{PAPER[name].stem}"
    assert cfg.samples_per_step == 256 * 8 == 2048
    assert cfg.samples_per_step % cfg.trainer.num_workers == 0
    assert (cfg.data.train.adapter, cfg.data.eval.adapter) == ("verl", "verl")
    assert cfg.data.train.path.endswith("OpenReasoning/train.parquet")  # TRAIN_FILE
    assert cfg.data.eval.path.endswith("aime25/test.parquet")  # VAL_FILE
    assert cfg.schedule.total_steps == 120


@pytest.mark.parametrize("name", PAPER)
def test_authors_values_match_our_keys(name):
    cfg = load(name)
    for flag, authors, key in TABLES[name]:
        ours = get(cfg, key)
        if key == "model.path":
            assert Path(ours).name == authors, (flag, key)
        elif isinstance(authors, float):
            assert ours == pytest.approx(authors), (flag, authors, key, ours)
        else:
            assert ours == authors, (flag, authors, key, ours)


@pytest.mark.parametrize("name", PAPER)
def test_total_steps_must_be_given(name):
    with pytest.raises(ConfigError, match="schedule.total_steps"):
        load(name, overrides=[])


@pytest.mark.parametrize("name", PAPER)
def test_long_responses_fit_the_trainer_settings(name):
    cfg = load(name)
    # One full-length sequence (prompt + response) must fit one micro-batch's token budget.
    assert cfg.trainer.micro_batch_tokens >= cfg.rollout.max_model_len == 40960
    assert cfg.trainer.activation_checkpointing and cfg.trainer.logprob_chunk <= 1024
    assert cfg.trainer.dtype == "bfloat16" and cfg.trainer.attn_implementation == "flash_attention_2"
    assert cfg.algorithm.overlong.max_len == 0  # the authors' reward is the verifier's alone


@pytest.mark.parametrize("name", PAPER)
def test_every_value_is_traced_in_a_comment(name):
    for number, line in enumerate(PAPER[name].read_text().splitlines(), start=1):
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if re.match(r"^\s*[\w.]+:\s*$", line) or line.startswith("name:"):
            continue  # a mapping header, or the run name
        assert "  # " in line, f"{PAPER[name].name}:{number} has no source comment: {line!r}"


def test_the_variants_differ_from_the_4b_recipe_only_where_they_should():
    base = load("tp4b")
    assert load("tp8b").trainer == base.trainer and load("tp8b").rollout == base.rollout
    assert load("tp8b").algorithm == base.algorithm and load("tp8b").schedule == base.schedule
    grpo, gspo = load("grpo4b"), load("gspo4b")
    assert grpo.trainer == gspo.trainer == base.trainer and grpo.rollout == gspo.rollout == base.rollout
    assert grpo.algorithm.loss == base.algorithm.loss and gspo.schedule == base.schedule
