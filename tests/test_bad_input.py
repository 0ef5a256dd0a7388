"""Bad input never costs a run: every bad config, YAML file or data row fails (or is skipped) in one line
that names the key, file or row, before Ray or any actor starts."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr.config import ConfigError, DatasetConfig, load_config
from rlvr.data import DataError, Prompt, drop_long_prompts, load_dataset

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs/quickstart_cpu.yaml")


def config_error(paths=(QUICKSTART,), overrides=(), check_paths=False) -> str:
    with pytest.raises(ConfigError) as info:
        load_config([str(p) for p in paths], list(overrides), check_paths=check_paths)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- ranges and cross-field rules
# (overrides on the quickstart, every substring the one-line message must hold)
BAD_OVERRIDES = [
    (["trainer.lr=-1"], ["trainer.lr", "> 0"]),
    (["trainer.lr=0"], ["trainer.lr", "> 0"]),
    (["trainer.lr=inf"], ["trainer.lr", "finite"]),
    (["trainer.lr=nan"], ["trainer.lr", "finite"]),
    (["trainer.lr=fast"], ["trainer.lr"]),
    (["trainer.micro_batch_tokens=0"], ["trainer.micro_batch_tokens", ">= 1"]),
    (["trainer.grad_clip=-1"], ["trainer.grad_clip", ">= 0"]),
    (["trainer.weight_decay=-0.1"], ["trainer.weight_decay", ">= 0"]),
    (["trainer.warmup_steps=-1"], ["trainer.warmup_steps", ">= 0"]),
    (["trainer.logprob_chunk=0"], ["trainer.logprob_chunk", ">= 1"]),
    (["trainer.betas=[0.9,1.5]"], ["trainer.betas", "[0, 1)"]),
    (["trainer.betas=[0.9]"], ["trainer.betas", "two"]),
    (["trainer.backend=nccl"], ["trainer.backend=nccl", "trainer.num_gpus"]),
    (["trainer.num_workers=3"], ["trainer.num_workers", "divide evenly"]),
    (["trainer.updates_per_batch=16"], ["trainer.updates_per_batch", "data.prompts_per_step"]),
    (["algorithm.advantage=reinforce_pp", "algorithm.group_size=1", "trainer.updates_per_batch=3"],
     ["trainer.updates_per_batch=3", "[2, 3]", "trainer.num_workers"]),
    (["data.prompts_per_step=0"], ["data.prompts_per_step", ">= 1"]),
    (["data.seed=-1"], ["data.seed", ">= 0"]),
    (["data.train.limit=0"], ["data.train.limit", ">= 1 (or null)"]),
    (["data.eval.synthetic_rows=0"], ["data.eval.synthetic_rows", ">= 1"]),
    (["data.train.adapter=gsm8k"], ["data.train.adapter=gsm8k", "data.train.path"]),
    (["data.on_bad_row=ignore"], ["data.on_bad_row", "skip", "fail"]),
    (["rollout.temperature=-0.5"], ["rollout.temperature", ">= 0"]),
    (["rollout.max_tokens=0"], ["rollout.max_tokens", ">= 1"]),
    (["rollout.max_tokens=100000"], ["rollout.max_tokens (100000)", "rollout.max_model_len (64)"]),
    (["rollout.max_tokens=64"], ["rollout.max_tokens (64)", "rollout.max_model_len (64)"]),
    (["rollout.max_model_len=1000"], ["rollout.max_model_len (1000)", "model.tiny.max_position (256)"]),
    (["rollout.top_p=0"], ["rollout.top_p", "in (0, 1]"]),
    (["rollout.gpu_memory_utilization=1.5"], ["rollout.gpu_memory_utilization", "in (0, 1]"]),
    (["rollout.kv_cache_gb=0"], ["rollout.kv_cache_gb", "> 0"]),
    (["rollout.num_workers=0"], ["rollout.num_workers", ">= 1"]),
    (["rollout.num_cpus=-1"], ["rollout.num_cpus", ">= 0"]),
    (["rollout.resources.accel=-1"], ["rollout.resources.accel", ">= 0"]),
    (["verifier.timeout_s=0"], ["verifier.timeout_s", "> 0"]),
    (["verifier.max_memory_mb=0"], ["verifier.max_memory_mb", ">= 1"]),
    (["algorithm.group_size=0"], ["algorithm.group_size", ">= 1"]),
    (["algorithm.group_size=1"], ["algorithm.advantage=grpo", "algorithm.group_size >= 2"]),
    (["algorithm.advantage=reinforce_pp", "algorithm.group_size=1", "algorithm.dynamic_sampling=true"],
     ["algorithm.dynamic_sampling", "group_size >= 2"]),
    (["algorithm.max_sampling_rounds=0"], ["algorithm.max_sampling_rounds", ">= 1"]),
    (["algorithm.loss.kl_coef=-1"], ["algorithm.loss.kl_coef", ">= 0"]),
    (["rollout.max_staleness=-1"], ["rollout.max_staleness", ">= 0"]),
    (["rollout.max_staleness=1"], ["rollout.max_staleness=1", "algorithm.loss.off_policy", "bypass, tis or mis"]),
    (["rollout.max_staleness=1", "algorithm.loss.off_policy=tis", "rollout.return_logprobs=false"],
     ["algorithm.loss.off_policy=tis", "rollout.return_logprobs=true"]),
    (["algorithm.loss.off_policy=is"], ["algorithm.loss.off_policy", "none, bypass, tis, mis"]),
    (["algorithm.loss.is_cap=1"], ["algorithm.loss.is_cap", "> 1"]),
    (["algorithm.loss.clip_low=1.5"], ["algorithm.loss.clip_low", "in [0, 1]"]),
    (["algorithm.loss.dual_clip=0.5"], ["algorithm.loss.dual_clip", "> 1 (or null)"]),
    (["algorithm.entropy_adv.kappa=0"], ["algorithm.entropy_adv.kappa", "> 0"]),
    (["schedule.total_steps=0"], ["schedule.total_steps", ">= 1"]),
    (["schedule.percentile.magnitude=99"], ["schedule.percentile", "fractions in [0, 1]"]),
    (["schedule.decay.gamma=0"], ["schedule.decay.gamma", "> 0"]),
    (["schedule.entropy_adv_scale.magnitude=inf"], ["schedule.entropy_adv_scale", "finite"]),
    (["schedule.entropy_adv_scale=fast"], ["override 'schedule.entropy_adv_scale=fast'", "bad value"]),
    (["model.tiny.num_kv_heads=3"], ["model.tiny.num_kv_heads (3)", "model.tiny.num_heads (4)"]),
    (["model.tiny.hidden_size=64"], ["model.tiny", "head size"]),
    (["model.tiny.warmstart_lr=0"], ["model.tiny.warmstart_lr", "> 0"]),
    (["eval.num_prompts=0"], ["eval.num_prompts", ">= 1"]),
    (["eval.temperature=-1"], ["eval.temperature", ">= 0"]),
    (["checkpoint.every=-1"], ["checkpoint.every", ">= 0"]),
    (["checkpoint.keep=-1"], ["checkpoint.keep", ">= 0"]),
    (["cluster.num_cpus=0"], ["cluster.num_cpus", ">= 1 (or null)"]),
    (["trainer.lrr=1"], ["trainer.lrr", "did you mean 'lr'"]),
    (["trainer.lr"], ["trainer.lr", "key=value"]),
    (["trainer.betas=[0.9"], ["override 'trainer.betas=[0.9'"]),
]


@pytest.mark.parametrize("overrides, expected", BAD_OVERRIDES, ids=lambda v: " ".join(v) if isinstance(v, list)
                         and "=" in "".join(v) else None)
def test_bad_override_fails_in_one_line_naming_the_key(overrides, expected):
    msg = config_error(overrides=overrides)
    for part in expected:
        assert part in msg, (part, msg)


@pytest.mark.parametrize("overrides", [
    ["trainer.grad_clip=0"],  # 0 turns clipping off (the trainer uses an infinite max norm)
    ["rollout.temperature=0", "eval.temperature=0"],  # greedy
    ["rollout.max_tokens=63"],  # one token of prompt room is enough for the config
    ["data.train.limit=1", "checkpoint.keep=0", "algorithm.loss.dual_clip=3"],
    ["algorithm.advantage=reinforce_pp", "algorithm.group_size=1"],
    ["trainer.updates_per_batch=4"],  # 2 groups x 8 per mini-batch over 2 ranks
    ["algorithm.loss.dual_clip=null", "cluster.num_cpus=null", "data.train.limit=null"],
])
def test_edge_values_that_are_valid(overrides):
    load_config([QUICKSTART], overrides)


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("override, key", [
    ("model.path=/nonexistent/model", "model.path"),
    ("data.train.path=/nonexistent/train.jsonl", "data.train.path"),
    ("data.eval.path=/nonexistent/eval.parquet", "data.eval.path"),
    ("checkpoint.resume=/nonexistent/step_10", "checkpoint.resume"),
])
def test_missing_paths_are_named(override, key):
    path = override.split("=", 1)[1]
    extra = ["data.train.adapter=gsm8k"] if key == "data.train.path" else []
    extra += ["data.eval.adapter=gsm8k"] if key == "data.eval.path" else []
    msg = config_error(overrides=[override, *extra], check_paths=True)
    assert msg.startswith(key) and path in msg and "not found" in msg
    load_config([QUICKSTART], [override, *extra])  # without check_paths (rlvr submit): paths live on the cluster


def test_existing_paths_and_resume_auto_pass(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    (tmp_path / "model").mkdir()
    load_config([QUICKSTART], [f"model.path={tmp_path / 'model'}", "data.train.adapter=gsm8k",
                               f"data.train.path={data}", "checkpoint.resume=auto"], check_paths=True)


# --------------------------------------------------------------------------- YAML files
YAML_CASES = [
    ("trainer:\n  lr: [1, 2\n  num_workers: 2\n", [":3:", "YAML syntax error"]),
    ("trainer:\n\tlr: 1\n", [":2:1:", "YAML syntax error"]),
    ("- trainer\n- rollout\n", ["top level must be a mapping", "got a list"]),
    ("just words\n", ["top level must be a mapping", "scalar 'just words'"]),
    ("trainer:\n  lr: 1.0e-4\n  num_workers: 2\n  lr: 2.0e-4\n", [":4:3:", "duplicate key 'trainer.lr'",
                                                                    "first set on line 2"]),
    ("name: a\nseed: 1\nname: b\n", [":3:1:", "duplicate key 'name'"]),
    ("trainer:\n  lr: fast\n", ["trainer.lr"]),
    ("trainer:\n  lrr: 0.1\n", ["unknown config key 'trainer.lrr'"]),
    ("a: 1\n---\nb: 2\n", ["YAML syntax error"]),
]


@pytest.mark.parametrize("text, expected", YAML_CASES, ids=[f"yaml{i}" for i in range(len(YAML_CASES))])
def test_yaml_problems_name_the_file(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = config_error(paths=[QUICKSTART, path])
    assert str(path) in msg, msg
    for part in expected:
        assert part in msg, (part, msg)


def test_binary_yaml_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"trainer:\n  lr: \xff\xfe\n")
    assert str(path) in config_error(paths=[path])
    assert "config file not found: /nonexistent.yaml" in config_error(paths=["/nonexistent.yaml"])


def test_empty_yaml_sets_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config([QUICKSTART, str(path)]).name == "quickstart_cpu"


# --------------------------------------------------------------------------- data rows
GOOD = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}
LONG = {"question": "Count " + "the sheep " * 50 + "please.", "answer": "#### 50"}


def write_rows(path: Path) -> Path:
    """Row 1 good, row 2 invalid UTF-8, row 3 over-long, row 4 good."""
    lines = [json.dumps(GOOD).encode(), b'{"question": "caf\xe9?", "answer": "#### 1"}', json.dumps(LONG).encode(),
             json.dumps(GOOD).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def words(text: str) -> list[str]:  # a stand-in tokenizer: one token per word
    return text.split()


def test_bad_rows_are_skipped_and_reported_by_row_number(tmp_path, caplog):
    path = write_rows(tmp_path / "rows.jsonl")
    with caplog.at_level(logging.WARNING, logger="rlvr.data"):
        prompts = load_dataset(DatasetConfig(adapter="gsm8k", path=str(path)), on_bad_row="skip")
        kept, skipped = drop_long_prompts(prompts, words, max_prompt_tokens=20, on_bad_row="skip")
    assert [p.meta["row"] for p in kept] == [1, 4] and skipped == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert all("\n" not in w for w in warnings)
    assert any("rows.jsonl row 2: invalid UTF-8" in w for w in warnings), warnings
    assert any("rows.jsonl row 3: prompt has 102 tokens, more than the 20" in w for w in warnings), warnings
    assert any("skipped 1 prompt(s) longer than 20 tokens, kept 2" in w for w in warnings), warnings


def test_bad_rows_fail_in_one_line_with_fail(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl")
    with pytest.raises(DataError) as info:
        load_dataset(DatasetConfig(adapter="gsm8k", path=str(path)), on_bad_row="fail")
    assert str(info.value) == f"{path} row 2: invalid UTF-8 (byte 0xe9 at column 18)"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + json.dumps(LONG).encode() + b"\n")
    prompts = load_dataset(DatasetConfig(adapter="gsm8k", path=str(path)), on_bad_row="fail")
    with pytest.raises(DataError) as info:
        drop_long_prompts(prompts, words, max_prompt_tokens=20, on_bad_row="fail")
    assert "\n" not in str(info.value) and str(info.value).startswith("rows.jsonl row 2: prompt has 102 tokens")


def test_drop_long_prompts_counts_and_refuses_an_empty_result():
    prompts = [Prompt(prompt="1+2=", ground_truth="3", verifier="arithmetic"),
               Prompt(prompt="x " * 30, ground_truth="0", verifier="arithmetic")]
    count = len  # a tokenizer_fn may return a count instead of ids
    kept, skipped = drop_long_prompts(prompts, count, max_prompt_tokens=10, source="arithmetic")
    assert (len(kept), skipped) == (1, 1)
    with pytest.raises(DataError, match="arithmetic row 2: prompt has 60 tokens"):
        drop_long_prompts(prompts, count, max_prompt_tokens=10, on_bad_row="fail", source="arithmetic")
    with pytest.raises(DataError, match="no prompt fits in 2 tokens"):
        drop_long_prompts(prompts, count, max_prompt_tokens=2)
    with pytest.raises(ValueError, match="max_prompt_tokens must be >= 1"):
        drop_long_prompts(prompts, count, max_prompt_tokens=0)


@pytest.mark.parametrize("on_bad_row", ["skip", "fail"])
def test_file_that_is_not_its_suffix_fails_naming_it(tmp_path, on_bad_row):
    binary = tmp_path / "rows.jsonl"
    pq.write_table(pa.Table.from_pylist([GOOD]), binary)  # a Parquet file named .jsonl
    garbage = tmp_path / "rows.parquet"
    garbage.write_text(json.dumps(GOOD) + "\n")  # JSON text named .parquet
    for path, problem in ((binary, "not a JSONL text file"), (garbage, "not a readable Parquet file")):
        with pytest.raises(DataError) as info:
            load_dataset(DatasetConfig(adapter="gsm8k", path=str(path)), on_bad_row=on_bad_row)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{path}: {problem}"), msg


def test_byte_order_mark_is_not_a_bad_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert load_dataset(DatasetConfig(adapter="gsm8k", path=str(path)), on_bad_row="fail")[0].ground_truth == "5"


def test_limit_zero_is_a_usage_error(tmp_path):
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_dataset(DatasetConfig(limit=0))
    path = write_rows(tmp_path / "rows.jsonl")
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_dataset(DatasetConfig(adapter="gsm8k", path=str(path), limit=0))


# --------------------------------------------------------------------------- end to end: the CLI refuses before Ray
CLI = "rlvr.cli" if importlib.util.find_spec("rlvr.cli") else "launch.cli"  # the entry moves in the refactor


@pytest.mark.parametrize("args, key", [
    (["train", "configs/quickstart_cpu.yaml", "trainer.lr=-1"], "trainer.lr"),
    (["train", "configs/quickstart_cpu.yaml", "rollout.max_tokens=100000"], "rollout.max_tokens"),
    (["submit", "configs/quickstart_cpu.yaml", "data.prompts_per_step=0", "--dry-run"], "data.prompts_per_step"),
    (["eval", "tiny", "--data", "tests/data/gsm8k_malformed.jsonl", "--adapter", "gsm8k",
      "--config", "configs/quickstart_cpu.yaml", "rollout.temperature=-1"], "rollout.temperature"),
])
def test_cli_refuses_bad_config_in_one_line_without_ray(tmp_path, args, key):
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), "RAY_ADDRESS": ""}
    out = subprocess.run([sys.executable, "-m", CLI, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == 1 and key in lines[0], out.stderr
    assert not (tmp_path / "ray").exists()  # no Ray session was started


# --------------------------------------------------------------------------- end to end: bad rows in `rlvr train`
def write_arithmetic_rows(path: Path, bad_utf8: bool = True) -> Path:
    """Arithmetic rows; row 2 invalid UTF-8 (unless ``bad_utf8`` is false), row 3 longer than the
    quickstart's 64 - 12 = 52 prompt tokens."""
    from rlvr.data import arithmetic_to_row, generate_arithmetic

    rows = [json.dumps(arithmetic_to_row(p)).encode() for p in generate_arithmetic(64, 0, 30)]
    rows.insert(1, b'{"prompt": "caf\xe9 1+1=", "answer": "2"}')
    rows.insert(2, json.dumps({"prompt": "1+" * 60 + "1=", "answer": "61"}).encode())
    path.write_bytes(b"\n".join(rows if bad_utf8 else rows[:1] + rows[2:]) + b"\n")
    return path


def train_on(path: Path, tmp_path: Path, *overrides: str, timeout: int = 120,
             watch_ray: bool = True) -> subprocess.CompletedProcess:
    """`rlvr train` on ``path``; ``watch_ray``: a Ray session would show as ``tmp_path/ray`` (too long a
    path for Ray's sockets, so only where Ray must not start)."""
    env = {**os.environ, "RAY_ADDRESS": "", **({"RAY_TMPDIR": str(tmp_path / "ray")} if watch_ray else {})}
    cmd = [sys.executable, "-m", CLI, "train", QUICKSTART, f"logging.run_dir={tmp_path / 'run'}",
           "data.train.adapter=arithmetic", f"data.train.path={path}", "logging.progress=false", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("bad_utf8, expected", [
    (True, "rlvr train: DataError: {path} row 2: invalid UTF-8 (byte 0xe9 at column 16)"),
    (False, ("rlvr train: DataError: rows.jsonl row 2: prompt has 122 tokens, more than the 52 that "
             "rollout.max_model_len - rollout.max_tokens leaves")),
])
def test_train_fails_on_the_first_bad_row_in_one_line_before_ray(tmp_path, bad_utf8, expected):
    path = write_arithmetic_rows(tmp_path / "rows.jsonl", bad_utf8)
    out = train_on(path, tmp_path, "data.on_bad_row=fail")
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if "Error" in line]
    assert errors == [expected.format(path=path)], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "ray").exists()  # no Ray session was started


@pytest.mark.slow
def test_train_skips_bad_rows_and_reports_them_by_row_number(tmp_path):
    path = write_arithmetic_rows(tmp_path / "rows.jsonl")
    out = train_on(path, tmp_path, "data.on_bad_row=skip", "schedule.total_steps=2", "eval.num_prompts=8",
                   timeout=600, watch_ray=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{path} row 2: invalid UTF-8 (byte 0xe9 at column 16) (skipped)" in out.stderr
    assert "rows.jsonl row 3: prompt has 122 tokens" in out.stderr
    assert "64 train / 8 eval prompts (2 bad rows skipped)" in out.stdout
    from rlvr.loop.metrics import read_metrics

    assert [row["step"] for row in read_metrics(str(tmp_path / "run" / "metrics.jsonl"))] == [0, 1, 2]
