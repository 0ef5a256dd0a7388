"""One typed config schema for the whole system.

Design: every component owns a small dataclass section; YAML files in
``configs/`` only *set values* on top of these defaults, and dotlist overrides
(``schedule.percentile.magnitude=0.8``) are merged last.  Loading goes through
``OmegaConf.structured`` so an unknown key or a wrong type fails at load time;
registry names are declared here with :func:`choice` (the math registries are
contract-tested against these lists) so a typo fails before any actor starts.
Every error is re-raised as a one-line :class:`ConfigError` naming the key and
the valid choices.  Numeric ranges are declared per field with :func:`bounded`;
every check (the declared names and ranges, strict YAML reading, rules across
fields, paths) lives in :mod:`rlvr.config_checks`, so one pass in
:func:`load_config` refuses bad input before Ray, actors or files are touched.

This module must import without torch, Ray or vLLM (tested), so that every
YAML can be validated by a fast CPU test and by ``rlvr submit`` on a laptop.

Percentiles are fractions in [0, 1] everywhere (TP-Schedule, arXiv 2605.25381,
writes its start threshold as 0.99).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlvr import config_checks
from rlvr.config_checks import ConfigError, read_yaml  # noqa: F401 - ConfigError is re-exported


def choice(default: str, *choices: str) -> Any:
    """A string field restricted to a registry's names (checked by :func:`rlvr.config_checks.check_fields`)."""
    assert default in choices, (default, choices)
    return field(default=default, metadata={"choices": tuple(choices)})


def bounded(default: Any, low: float = -math.inf, high: float = math.inf, *, above: float | None = None) -> Any:
    """A finite numeric field in [low, high], and > ``above`` when given; a None default also allows null."""
    return field(default=default, metadata={"range": (low, high, above)})


SCHEDULE_KINDS = ("constant", "linear", "sigmoid", "gamma", "cosine", "step")
ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
POLICY_LOSSES = ("ppo", "gspo")
LOSS_AGGS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
OFF_POLICY = ("none", "bypass", "tis", "mis")
CREDIT_CRITERIA = ("none", "position", "entropy", "surprisal", "advantage_entropy")
CREDIT_SCOPES = ("trajectory", "group", "batch")
DATASETS = ("arithmetic", "gsm8k", "math", "verl", "columns")
VERIFIERS = ("arithmetic", "gsm8k", "math")
ROLLOUT_BACKENDS = ("vllm",)
WEIGHT_TRANSPORTS = ("object_store", "collective")
TRAINER_ENGINES = ("fsdp2", "deepspeed")
DEEPSPEED_OPTIMIZERS = ("torch_adamw", "cpu_adam", "fused_adam")
TASKS = ("single", "chain")  # generated arithmetic: one operation, or a chain answered step by step
SAMPLINGS = ("standard", "dynamic", "reinforce_ada")  # how a step's groups are sampled
EXIT_RULES = ("balanced", "positive")  # when Reinforce-Ada stops sampling a prompt (rlvr.algo.reinforce_ada)
DOWN_SAMPLINGS = ("none", "intra_group", "cross_group")  # D^3S sample level (rlvr.algo.d3s.DOWN_SAMPLING)


# --------------------------------------------------------------------------- schedules
@dataclass
class ScheduleConfig:
    """A value over training: ``magnitude`` at progress 0, ``end`` at progress 1.

    progress = clip((step - start_ratio*T) / ((end_ratio - start_ratio)*T), 0, 1), step 0-based.
    kind=gamma follows the authors' (magnitude * (1 - progress)) ** gamma, so it starts at
    end + (magnitude - end) ** gamma (see rlvr.algo.schedules).
    """

    kind: str = choice("constant", *SCHEDULE_KINDS)  # curve from magnitude to end
    magnitude: float = 0.0  # value before/at the start of the window (paper: 0.99)
    end: float = 0.0  # value at and after the end of the window
    start_ratio: float = bounded(0.0, 0.0, 1.0)  # window start, fraction of total steps
    end_ratio: float = bounded(1.0, 0.0, 1.0)  # window end, fraction of total steps (paper: 0.8)
    gamma: float = bounded(2.0, above=0)  # kind=gamma: exponent of the linearly falling value (authors: 2)
    sharpness: float = bounded(8.0, above=0)  # kind=sigmoid: slope of the logistic over progress (authors: 8)
    num_steps: int = bounded(4, 1)  # number of equal plateaus for kind=step


def constant(value: float) -> ScheduleConfig:
    return ScheduleConfig(kind="constant", magnitude=value, end=value)


@dataclass
class ScheduleSection:
    """Owned by the Scheduler actor: the global clock and every scheduled scalar."""

    total_steps: int = bounded(100, 1)  # optimizer steps of the run (T in the schedules)
    percentile: ScheduleConfig = field(default_factory=lambda: constant(0.0))  # credit threshold
    decay: ScheduleConfig = field(default_factory=lambda: constant(0.0))  # weight of untargeted tokens
    entropy_adv_scale: ScheduleConfig = field(default_factory=lambda: constant(0.0))  # s in A' = A + s*psi
    sample_keep: ScheduleConfig = field(default_factory=lambda: constant(1.0))  # D^3S: share of samples kept


# --------------------------------------------------------------------------- model / data
@dataclass
class TinyModelConfig:
    """The CPU model built from code (Qwen2 architecture) and its warm start."""

    hidden_size: int = bounded(128, 1)  # width of the residual stream
    num_layers: int = bounded(2, 1)  # transformer blocks
    num_heads: int = bounded(4, 1)  # attention heads
    num_kv_heads: int = bounded(2, 1)  # grouped-query KV heads
    intermediate_size: int = bounded(256, 1)  # MLP width
    max_position: int = bounded(256, 2)  # longest sequence (prompt + response)
    warmstart_steps: int = bounded(1500, 0)  # supervised steps on synthetic arithmetic before RL
    warmstart_lr: float = bounded(1e-3, above=0)  # AdamW learning rate of the warm start
    warmstart_batch: int = bounded(32, 1)  # sequences per warm-start step
    warmstart_direct: float = bounded(0.3, 0.0, 1.0)  # share of multi-digit warm-start problems answered
    # bare, not written out
    seed: int = 0  # seed of the initialisation and the warm-start data
    task: str = choice("single", *TASKS)  # generated task of the warm start (chain: warmstart_direct is the share
    # of complete teacher solutions); "single" stays out of the cache key

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
    limit: Optional[int] = bounded(None, 1)  # use at most this many rows
    synthetic_rows: int = bounded(4096, 1)  # rows generated when adapter == "arithmetic"
    synthetic_seed: int = 1  # generator seed of the arithmetic task (train and eval differ)
    max_operand: int = bounded(30, 1)  # operands of the arithmetic task are drawn from [0, max_operand]
    heldout: bool = False  # arithmetic: draw from the held-out part of the prompts (disjoint from training)
    task: str = choice("single", *TASKS)  # arithmetic without a path: "12+7=" or a chain "12+7-3=" (rlvr.data.chain)
    prompt_key: str = "prompt"  # adapter=columns: the column holding the prompt text
    answer_key: str = "answer"  # adapter=columns: the column holding the ground truth
    verifier: str = choice("math", *VERIFIERS)  # adapter=columns: the verifier of every row


@dataclass
class DataSection:
    train: DatasetConfig = field(default_factory=DatasetConfig)  # prompts to train on
    eval: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(synthetic_rows=128, synthetic_seed=2, heldout=True))
    prompts_per_step: int = bounded(8, 1)  # prompts sampled per RL step (x group_size responses)
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    on_bad_row: str = choice("skip", "skip", "fail")  # malformed rows: report and skip, or stop
    seed: int = bounded(0, 0)  # seed of the prompt sampler


# --------------------------------------------------------------------------- pools
@dataclass
class PoolConfig:
    """Size and placement of one actor pool; each pool scales on its own."""

    num_workers: int = bounded(1, 1)  # actors (or processes, for the verifier) in the pool
    num_cpus: float = bounded(1.0, 0)  # CPUs reserved per actor
    num_gpus: float = bounded(0.0, 0)  # GPUs reserved per actor
    resources: Dict[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    label_selector: Dict[str, str] = field(default_factory=dict)  # Ray node labels the actor requires


@dataclass
class RolloutConfig(PoolConfig):
    backend: str = choice("vllm", *ROLLOUT_BACKENDS)  # generation engine (rlvr.rollout.engine.ROLLOUT_BACKENDS)
    temperature: float = bounded(1.0, 0)  # sampling temperature
    top_p: float = bounded(1.0, high=1.0, above=0)  # nucleus sampling mass
    max_tokens: int = bounded(32, 1)  # response budget per sample
    max_model_len: int = bounded(256, 2)  # prompt + response context of the engine
    dtype: str = choice("float32", "float32", "bfloat16", "float16")  # engine weights
    gpu_memory_utilization: float = bounded(0.5, high=1.0, above=0)  # GPU only
    kv_cache_gb: float = bounded(1.0, above=0)  # CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    tensor_parallel_size: int = bounded(1, 1)  # GPUs per engine
    enforce_eager: bool = True  # skip graph capture (fast start; CPU needs it)
    engine_in_process: bool = True  # vLLM's engine core in the actor's process: no IPC hop per call (CPU)
    num_threads: int = bounded(0, 0)  # CPU engines: torch threads (0: the actor's num_cpus, at least 1)
    return_logprobs: bool = True  # sampling log-probs, for rollout/logprob_mismatch only (a tiny model's CPU
    # decode spends ~30% of its time building them; off drops the metric)
    seed: int = 0  # sampling seed of worker 0 (worker i uses seed + i)
    max_staleness: int = bounded(0, 0)  # k: generation runs up to k policy versions ahead of training (0: in step)


@dataclass
class VerifierConfig(PoolConfig):
    num_actors: int = bounded(1, 1)  # reward actors, num_workers processes each; a call is split over them
    timeout_s: float = bounded(5.0, above=0)  # hard per-answer limit; a stuck process is killed
    max_memory_mb: int = bounded(1024, 1)  # address-space limit per verifier process
    format_weight: float = bounded(0.0, 0)  # added reward for an answer in the required form
    gsm8k_extract: str = choice("auto", "auto", "hash", "boxed", "last_number")  # GSM8K answer extraction


@dataclass
class DeepSpeedConfig:
    """``trainer.engine=deepspeed``: ZeRO stage, offload and optimizer (rlvr.train.deepspeed_trainer)."""

    zero_stage: int = bounded(2, 1, 3)  # 1: optimizer state sharded, 2: + gradients, 3: + parameters
    offload_optimizer: str = choice("none", "none", "cpu")  # keep optimizer state (and its step) in CPU memory
    offload_params: str = choice("none", "none", "cpu")  # keep sharded parameters in CPU memory (ZeRO-3 only)
    optimizer: str = choice("torch_adamw", *DEEPSPEED_OPTIMIZERS)  # torch AdamW (no compile), DeepSpeedCPUAdam
    # or FusedAdam (both compile a C++/CUDA op on first use); all AdamW with trainer.lr/betas/weight_decay


@dataclass
class TrainerConfig(PoolConfig):
    engine: str = choice("fsdp2", *TRAINER_ENGINES)  # training engine (rlvr.train.engines.TRAINER_ENGINES)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # used when engine == deepspeed
    lr: float = bounded(1e-5, above=0)  # AdamW learning rate
    weight_decay: float = bounded(0.0, 0)  # AdamW weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_steps: int = bounded(0, 0)  # linear LR warm-up
    grad_clip: float = bounded(1.0, 0)  # max global grad norm (0 disables)
    updates_per_batch: int = bounded(1, 1)  # optimizer steps per rollout batch (mini-batches); >1 makes ratios != 1
    micro_batch_tokens: int = bounded(8192, 1)  # token budget of one forward/backward micro-batch
    skip_zero_advantage: bool = True  # no forward/backward for groups whose advantage x token_weight is 0
    # everywhere (zero-variance groups): the same gradient, less compute; not with a KL term, which they still carry
    dtype: str = choice("float32", "float32", "bfloat16")  # compute dtype (master weights stay fp32)
    attn_implementation: str = choice("sdpa", "sdpa", "eager", "flash_attention_2")
    activation_checkpointing: bool = False  # recompute blocks in backward
    packing: bool = True  # pack sequences without padding (position ids restart per sequence)
    logprob_chunk: int = bounded(1024, 1)  # tokens per chunk of the log-prob/entropy head
    backend: str = choice("auto", "auto", "gloo", "nccl")  # torch.distributed backend


@dataclass
class WeightSyncConfig:
    """Trainer -> engine weights after every step (rlvr.rollout.transport.WEIGHT_TRANSPORTS)."""

    transport: str = choice("object_store", *WEIGHT_TRANSPORTS)  # safetensors via Ray's object store, or a
    # broadcast over a stateless gloo/NCCL group between trainer rank 0 and every engine worker
    bucket_mb: float = bounded(256.0, above=0)  # size of one packed bucket (one object / one broadcast)
    timeout_s: float = bounded(600.0, above=0)  # a sync (or group rendezvous) slower than this fails, naming ranks


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # Ray address; None starts (or joins) a local cluster
    namespace: str = "rlvr"  # Ray namespace of the named actors
    dashboard_host: str = "127.0.0.1"  # loopback unless asked otherwise
    num_cpus: Optional[int] = bounded(None, 1)  # CPUs of a locally started cluster (None: all)


# --------------------------------------------------------------------------- algorithm
@dataclass
class LossConfig:
    name: str = choice("ppo", *POLICY_LOSSES)  # token-level PPO ratio, or GSPO sequence ratio
    clip_low: float = bounded(0.2, 0.0, 1.0)  # ratio lower bound is 1 - clip_low
    clip_high: float = bounded(0.2, 0)  # ratio upper bound is 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: Optional[float] = bounded(None, above=1)  # dual-clip constant c > 1 for negative advantages
    agg: str = choice("token_mean", *LOSS_AGGS)  # how token losses become one scalar
    kl_coef: float = bounded(0.0, 0)  # weight of the KL to the reference policy (0: no reference model)
    kl_estimator: str = choice("k3", *KL_ESTIMATORS)  # Schulman's k1/k2/k3
    off_policy: str = choice("none", *OFF_POLICY)  # correction for stale batches (rlvr.algo.offpolicy)
    is_cap: float = bounded(2.0, above=1)  # tis: truncate pi_prox / pi_behav here; mis: keep within [1/cap, cap]


@dataclass
class CreditConfig:
    """Which tokens are *targeted*; the threshold and decay come from the schedule."""

    criterion: str = choice("none", *CREDIT_CRITERIA)  # how a trajectory ranks its tokens
    scope: str = choice("trajectory", *CREDIT_SCOPES)  # over which tokens the percentile is taken


@dataclass
class EntropyAdvConfig:
    """Entropy-shaped advantage A' = A + s * min(alpha * H, |A| / kappa) (H detached)."""

    alpha: float = bounded(0.4, 0)  # cap of the entropy bonus per unit entropy
    kappa: float = bounded(2.0, above=0)  # the bonus stays below |A| / kappa


@dataclass
class OverlongConfig:
    """DAPO soft overlong punishment (arXiv 2503.14476, Eq. 13), added to the verifier reward.

    0 up to max_len - cache tokens, linear down to -penalty at max_len, -penalty beyond
    (rlvr.algo.overlong.overlong_penalty).  max_len = 0 turns it off.
    """

    max_len: int = 0  # L_max in response tokens (DAPO: 20480, its generation budget); 0: off
    cache: int = 0  # L_cache: the ramp's width in tokens, ending at max_len (DAPO: 4096)
    penalty: float = 1.0  # reward subtracted at and beyond max_len (DAPO: 1.0, the reward scale)

    @property
    def enabled(self) -> bool:
        return self.max_len > 0


@dataclass
class AlgorithmConfig:
    group_size: int = bounded(8, 1)  # responses sampled per prompt
    advantage: str = choice("grpo", *ADVANTAGES)  # how group rewards become advantages
    advantage_eps: float = bounded(1e-6, 0)  # added to the group std before division
    loss: LossConfig = field(default_factory=LossConfig)
    credit: CreditConfig = field(default_factory=CreditConfig)
    entropy_adv: EntropyAdvConfig = field(default_factory=EntropyAdvConfig)
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups and sample again (= sampling: dynamic)
    max_sampling_rounds: int = bounded(3, 1)  # bound on dynamic-sampling / Reinforce-Ada generations per step
    sampling: str = choice("standard", *SAMPLINGS)  # reinforce_ada: sample a prompt again until it has a right and
    # a wrong answer, then keep a balanced group (rlvr.algo.reinforce_ada)
    exit_rule: str = choice("balanced", *EXIT_RULES)  # Reinforce-Ada: balanced, or positive (one right answer)
    down_sample: str = choice("none", *DOWN_SAMPLINGS)  # D^3S: keep the max-Var(A) subset (schedule.sample_keep)
    overlong: OverlongConfig = field(default_factory=OverlongConfig)  # DAPO length penalty (off by default)


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
    every: int = bounded(0, 0)  # save every K steps (0: only at the end)
    keep: int = bounded(2, 0)  # newest checkpoints kept (0: all)
    resume: Optional[str] = None  # checkpoint directory to continue from
    max_recoveries: int = bounded(3, 0)  # lost trainer ranks recovered in the run, from the last checkpoint


@dataclass
class EvalConfig:
    every: int = bounded(0, 0)  # held-out evaluation every K steps (0: only before and after training)
    num_prompts: int = bounded(128, 1)  # held-out prompts evaluated
    temperature: float = bounded(0.0, 0)  # 0: greedy pass@1


@dataclass
class RLConfig:
    name: str = "run"  # run name (used in run_dir)
    seed: int = 0  # global seed
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    verifier: VerifierConfig = field(default_factory=lambda: VerifierConfig(num_workers=2))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
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
def load_config(paths: Sequence[str] = (), overrides: Sequence[str] = (), check_paths: bool = False) -> RLConfig:
    """Merge defaults <- each YAML in order <- dotlist overrides; validate; return dataclasses.

    This is the one validation pass before anything starts: every problem is a one-line
    :class:`ConfigError` naming the key (and the file or override it came from).  ``check_paths``
    also requires the model directory, data files and resume checkpoint to exist on this machine
    (``rlvr train`` / ``rlvr eval``); ``rlvr submit`` leaves it off, its paths live on the cluster.
    """
    merged = OmegaConf.structured(RLConfig)
    for path in paths:
        merged = _merge(merged, read_yaml(path), where=path)
    for item in overrides:
        merged = _merge(merged, _parse_override(item), where=f"override '{item}'")
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise config_checks.omegaconf_error(exc) from None
    config_checks.check_fields(cfg)
    if check_paths:
        config_checks.check_paths(cfg)
    return cfg


def _parse_override(item: str) -> Any:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must be key=value, e.g. trainer.lr=1e-5")
    try:
        return OmegaConf.from_dotlist([item])
    except Exception as exc:  # noqa: BLE001 - YAML and OmegaConf parse errors alike: name the override
        raise ConfigError(f"override '{item}': cannot parse the value ({str(exc).splitlines()[0]})") from None


def _merge(merged: Any, node: Any, where: str) -> Any:
    try:
        return OmegaConf.merge(merged, _expand_schedules(node, where=where))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {config_checks.omegaconf_error(exc)}") from None


def _expand_schedules(node: Any, where: str) -> Any:
    """Let a scalar stand for a constant schedule: ``schedule.percentile=0.2``."""
    sched = node.get("schedule") if OmegaConf.is_dict(node) else None
    if OmegaConf.is_dict(sched):
        for key in ("percentile", "decay", "entropy_adv_scale", "sample_keep"):
            value = sched.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sched[key] = {"kind": "constant", "magnitude": float(value), "end": float(value)}
    return node


def to_yaml(cfg: RLConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
