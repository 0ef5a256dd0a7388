"""The one config schema: every YAML loads, typos fail in one line listing valid choices,
overrides work, and the schema imports without torch/Ray/vLLM."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from rlvr.config import ConfigError, RLConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ALGORITHMS = [p for p in CONFIGS if not p.name.startswith(("cluster_", "quickstart"))]


def test_there_are_configs_for_the_paper_comparison():
    names = {p.stem for p in CONFIGS}
    assert {"grpo", "tp_schedule", "tp_schedule_gspo", "forking_schedule", "entropy_adv_schedule",
            "static_entropy80", "dapo", "dr_grpo", "quickstart_cpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_alone(path):
    cfg = load_config([str(path)])
    assert cfg.samples_per_step == cfg.data.prompts_per_step * cfg.algorithm.group_size


@pytest.mark.parametrize("path", ALGORITHMS, ids=lambda p: p.name)
def test_every_algorithm_merges_on_the_quickstart(path):
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml"), str(path)])
    assert cfg.name == path.stem
    assert cfg.rollout.num_workers == 1  # hardware from the first file survives the merge


def test_tp_schedule_is_the_papers_schedule():
    cfg = load_config([str(ROOT / "configs/tp_schedule.yaml")])
    p = cfg.schedule.percentile
    assert (p.kind, p.magnitude, p.end, p.start_ratio, p.end_ratio) == ("linear", 0.99, 0.0, 0.0, 0.8)
    assert cfg.algorithm.credit.criterion == "position" and cfg.schedule.decay.magnitude == 0.0
    assert load_config([str(ROOT / "configs/static_entropy80.yaml")]).schedule.percentile.kind == "constant"


def test_dotlist_overrides_and_scalar_schedule_shorthand():
    cfg = load_config([str(ROOT / "configs/tp_schedule.yaml")],
                      ["schedule.percentile.magnitude=0.8", "rollout.num_workers=4", "trainer.num_workers=8",
                       "schedule.decay=0.25", "algorithm.loss.clip_high=0.28"])
    assert cfg.schedule.percentile.magnitude == 0.8 and cfg.schedule.percentile.kind == "linear"
    assert (cfg.rollout.num_workers, cfg.trainer.num_workers) == (4, 8)
    assert (cfg.schedule.decay.kind, cfg.schedule.decay.magnitude, cfg.schedule.decay.end) == ("constant", 0.25, 0.25)
    assert cfg.algorithm.loss.clip_high == 0.28


def _error(paths=(), overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(list(paths), list(overrides))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_misspelt_key_names_it_and_lists_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm:\n  loss:\n    clip_hihg: 0.3\n")
    msg = _error([bad])
    assert "algorithm.loss.clip_hihg" in msg and "did you mean 'clip_high'" in msg
    assert "clip_low" in msg and "kl_estimator" in msg
    assert "trainer.lrr" in _error(overrides=["trainer.lrr=1"])


def test_unknown_registry_name_lists_choices():
    msg = _error(overrides=["algorithm.advantage=gpro"])
    assert "'gpro'" in msg and "algorithm.advantage" in msg
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        assert name in msg
    msg = _error(overrides=["algorithm.credit.criterion=entropyy"])
    assert "position" in msg and "advantage_entropy" in msg
    assert "linear" in _error(overrides=["schedule.percentile.kind=linar"])


def test_wrong_type_and_range_errors():
    assert "trainer.lr" in _error(overrides=["trainer.lr=fast"])
    assert "fractions in [0, 1]" in _error(overrides=["schedule.percentile.magnitude=99"])
    assert "divide evenly" in _error(overrides=["trainer.num_workers=3"])
    assert "head size" in _error(overrides=["model.tiny.hidden_size=64"])
    assert "not found" in _error(paths=["/nonexistent.yaml"])


def test_config_imports_without_torch_ray_or_vllm():
    code = ("import sys; import rlvr.config as c; c.load_config(['configs/tp_schedule.yaml']); "
            "bad = [m for m in ('torch', 'ray', 'vllm', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# Numeric fields with no range of their own, and why.
UNBOUNDED = {
    "seed": "any integer seeds the run",
    "rollout.seed": "any integer seeds sampling",
    "data.train.synthetic_seed": "any integer seeds the generator",
    "data.eval.synthetic_seed": "any integer seeds the generator",
    "model.tiny.seed": "any integer seeds the initialisation",
}
CROSS_CHECKED = ("schedule.", "algorithm.overlong.")  # magnitude/end, overlong: ranges span fields


def _numeric_fields(cls, prefix=""):
    for f in fields(cls):
        kind = str(f.type)
        if is_dataclass(f.default_factory() if callable(f.default_factory) else None):
            yield from _numeric_fields(type(f.default_factory()), f"{prefix}{f.name}.")
        elif kind.replace("Optional[", "").rstrip("]") in ("int", "float"):
            yield f"{prefix}{f.name}", f


def test_every_numeric_field_declares_its_range():
    missing = [key for key, f in _numeric_fields(RLConfig)
               if "range" not in f.metadata and key not in UNBOUNDED and not key.startswith(CROSS_CHECKED)]
    assert not missing, f"give these fields a bounded(...) range (or list them in UNBOUNDED): {missing}"


def test_cluster_configs_load_without_their_cluster_paths():
    path = str(ROOT / "configs/cluster_small.yaml")
    assert load_config([path]).model.path.startswith("/mnt/")  # rlvr submit validates on a laptop
    with pytest.raises(ConfigError, match=r"^model.path: directory not found: /mnt/"):
        load_config([path], check_paths=True)  # rlvr train / eval run where the paths must exist
