"""rlvr vs TRL's GRPOTrainer on one CPU box: seconds/step, samples/s and held-out gain (issue 7, item 5).

Both systems run one after the other in this process's machine, on the same task, from the same
checkpoint, with the same algorithm:

* task: the synthetic arithmetic task of ``rlvr.data`` (training part, 4096 prompts, seed 1); both
  see the same prompts in the same order (rlvr's ``PromptSampler`` order, fed to TRL unshuffled);
  the reward is ``rlvr.verifiers.arithmetic.arithmetic_reward`` (the response's leading integer).
* algorithm: GRPO, 8 prompts x group size 8 = 64 samples per step, one optimizer step per batch
  (on-policy), clip 0.2, token-mean loss over the batch (rlvr ``token_mean`` = TRL ``dapo``), no
  KL (rlvr ``kl_coef=0``, TRL ``beta=0``), AdamW with a constant learning rate, grad clip 1.0,
  float32, no activation checkpointing, sampling at temperature 1; rlvr without token credit
  (``credit.criterion=none``), i.e. plain GRPO.
* TRL: ``GRPOTrainer`` in this process, ``use_cpu=True``, no vLLM (``transformers.generate``),
  ``--threads`` torch threads (default: every core, the machine rlvr gets).
  rlvr: ``rlvr.loop.run.run`` -- Ray, one vLLM rollout worker (OpenMP on every core while it generates),
  the reward pool, 2 FSDP2 trainer ranks of one thread each -- from ``configs/quickstart_cpu.yaml``,
  with padded micro-batches of up to 16k tokens, i.e. one per rank, and no sampling log-probs
  (TRL computes none; rlvr's feed only a metric).  Two rlvr rows: ``rlvr`` trains every sample,
  the same work as TRL; ``rlvr_skip`` is rlvr's default, which leaves zero-variance groups out of
  the forward/backward (``trainer.skip_zero_advantage``: the same gradient; "trained samples").
* sizes: ``tiny``, the quickstart's warm-started 0.3M-parameter Qwen2 (``ensure_model``) with the
  quickstart's completion budget and learning rate (completions stop at EOS); ``compute``, a 25M-parameter Qwen2 (hidden 512, 8
  layers) with the same character tokenizer, warm-started briefly (:func:`build_compute_model`)
  to answer and then keep writing filler instead of EOS, so every completion runs the full
  128 tokens in both systems and generation and training dominate fixed overheads.

Reported per system and size: median seconds/step over the steps after ``--warmup`` (TRL: from
``on_step_begin`` to ``on_step_end``, which holds its generation, reward and update; rlvr: its
``time/step`` metric), samples/s = 64 / that, the phase split (rlvr: its ``time/*`` metrics;
TRL: generate+score vs. the rest), the whole wall time of the N steps including start-up, and
greedy held-out accuracy (128 held-out prompts, the same verifier, the same ``transformers``
greedy decoding for both) before and after.  With ``--repeats R`` the two systems alternate order
and the table shows medians over repeats.  The load average is printed around each run.

    python bench/vs_trl.py [--steps 10] [--steps-compute 6] [--sizes tiny,compute] [--systems trl,rlvr,rlvr_skip]
                           [--repeats 1] [--json out.json] [--rlvr-set rollout.max_staleness=1 ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import string
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PROMPTS_PER_STEP, GROUP_SIZE = 8, 8
SAMPLES = PROMPTS_PER_STEP * GROUP_SIZE
FILLER = string.ascii_lowercase + " "


@dataclass
class Size:
    name: str
    max_tokens: int  # completion budget of both systems
    max_model_len: int  # rlvr's vLLM context (prompt + completion)
    lr: float
    tiny: Dict[str, Any] = field(default_factory=dict)  # TinyModelConfig fields; empty: the quickstart model
    warmstart_steps: int = 0  # compute size: brief warm start (answer, newline, filler; never EOS)


SIZES = {
    "tiny": Size("tiny", max_tokens=0, max_model_len=0, lr=0.0),  # 0: the quickstart's values (see quickstart_size)
    "compute": Size("compute", max_tokens=128, max_model_len=256, lr=1e-4,
                    tiny={"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4,
                          "intermediate_size": 1536, "max_position": 256, "warmstart_lr": 1e-3,
                          "warmstart_batch": 32, "seed": 0},
                    warmstart_steps=60),
}


def quickstart_size(size: Size) -> Size:
    """``size`` with the quickstart's completion budget, context and learning rate where it leaves them 0."""
    from dataclasses import replace

    from rlvr.config import load_config

    quick = load_config([os.path.join(ROOT, "configs", "quickstart_cpu.yaml")])
    return replace(size, max_tokens=size.max_tokens or quick.rollout.max_tokens,
                   max_model_len=size.max_model_len or quick.rollout.max_model_len, lr=size.lr or quick.trainer.lr)


def log(msg: str) -> None:
    print(f"[vs_trl] {msg} (load avg {os.getloadavg()[0]:.2f})", flush=True)


# --------------------------------------------------------------------------- models
def model_for(size: Size) -> str:
    from rlvr.config import ModelConfig
    from rlvr.train.tiny_model import ensure_model

    return ensure_model(ModelConfig()) if not size.tiny else build_compute_model(size)


def build_compute_model(size: Size, cache_dir: str = "~/.cache/rlvr/models") -> str:
    """A Qwen2 of ``size.tiny`` with the tiny model's tokenizer, taught ``prompt -> answer \\n filler``.

    The warm start never shows EOS, so sampling runs to the token budget (the same work in both
    systems); the answer still comes first, so the arithmetic verifier's reward is meaningful.
    Cached under ``cache_dir/bench-<hash of the recipe>``.
    """
    import torch

    from rlvr.config import TinyModelConfig
    from rlvr.data import generate_arithmetic
    from rlvr.train.tiny_model import BUILD_VERSION, build_model, build_tokenizer

    spec = {"tiny": size.tiny, "steps": size.warmstart_steps, "filler": FILLER, "version": 1,
            "tiny_model_build": BUILD_VERSION}  # the tokenizer comes from rlvr.train.tiny_model
    final = os.path.join(os.path.expanduser(cache_dir), "bench-" + hashlib.sha256(
        json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12])
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    start = time.perf_counter()
    tcfg = TinyModelConfig(**size.tiny)
    tokenizer = build_tokenizer()
    model = build_model(tcfg, tokenizer)
    rng = random.Random(tcfg.seed)
    prompts = generate_arithmetic(size.warmstart_steps * tcfg.warmstart_batch, seed=tcfg.seed, max_operand=20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.warmstart_lr)
    model.train()
    for step in range(size.warmstart_steps):
        rows = []
        for p in prompts[step * tcfg.warmstart_batch:(step + 1) * tcfg.warmstart_batch]:
            target = p.ground_truth + "\n" + "".join(rng.choice(FILLER) for _ in range(16))
            prompt_ids = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
            target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        loss = model(input_ids=input_ids, labels=labels).loss  # right padding: no mask needed for causal LM
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    tmp = tempfile.mkdtemp(prefix=".bench-", dir=os.path.dirname(final))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "bench_model.json"), "w") as f:
        json.dump({**spec, "last_loss": float(loss), "build_seconds": time.perf_counter() - start}, f, indent=1)
    os.rename(tmp, final)
    log(f"built {final} in {time.perf_counter() - start:.0f}s, last warm-start loss {float(loss):.3f}")
    return final


def heldout_accuracy(model_or_path: Any, tokenizer_path: str) -> float:
    """Greedy pass@1 on the default held-out prompts, scored by the arithmetic verifier's rule."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.config import DatasetConfig
    from rlvr.train.tiny_model import greedy_accuracy, heldout_prompts

    model = (AutoModelForCausalLM.from_pretrained(model_or_path, dtype=torch.float32)
             if isinstance(model_or_path, str) else model_or_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return greedy_accuracy(model, tokenizer, heldout_prompts(DatasetConfig.max_operand))


# --------------------------------------------------------------------------- data
def train_prompts(steps: int) -> list:
    """The prompts rlvr's sampler draws in ``steps`` steps, in order (quickstart data section)."""
    from rlvr.config import DataSection
    from rlvr.data import PromptSampler, load_dataset

    data = DataSection()
    sampler = PromptSampler(load_dataset(data.train), PROMPTS_PER_STEP, data.seed)
    return [p for _ in range(steps) for p in sampler.next_batch()]


# --------------------------------------------------------------------------- TRL
def run_trl(model_path: str, size: Size, steps: int, warmup: int, work_dir: str) -> Dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.verifiers.arithmetic import arithmetic_reward

    def reward(completions, ground_truth, **_):
        return [arithmetic_reward(c, g) for c, g in zip(completions, ground_truth)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.steps: List[float] = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.steps.append(time.perf_counter() - self.t)

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.generate_s.append(time.perf_counter() - t)  # set before train()
            return out

    start = time.perf_counter()
    prompts = train_prompts(steps)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in prompts], "ground_truth": [p.ground_truth for p in prompts]})
    args = GRPOConfig(
        output_dir=work_dir, use_cpu=True, bf16=False, max_steps=steps, seed=0,
        per_device_train_batch_size=SAMPLES, num_generations=GROUP_SIZE, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, shuffle_dataset=False,
        max_completion_length=size.max_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=size.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, optim="adamw_torch",
        beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    clock = Clock()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                               processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[clock])
    trainer.generate_s = []
    trainer.train()
    wall = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "reward" in h]
    step_s = statistics.median(clock.steps[warmup:])
    gen_s = statistics.median(trainer.generate_s[warmup:])
    return {
        "step_s": step_s, "samples_per_s": SAMPLES / step_s, "wall_s": wall,
        "phases": {"generate+score": gen_s, "train (fwd/bwd/step)": step_s - gen_s}, "trained_frac": 1.0,
        "completion_len": statistics.mean(h.get("completions/mean_length", float("nan")) for h in logs),
        "train_reward": statistics.mean(h["reward"] for h in logs[warmup:]),
        "accuracy_after": heldout_accuracy(trainer.model, model_path),
    }


# --------------------------------------------------------------------------- rlvr
def run_rlvr(model_path: str, size: Size, steps: int, warmup: int, work_dir: str,
             skip_zero_advantage: bool = False) -> Dict[str, Any]:
    from step_bench import PHASES, phase_medians

    from rlvr.loop.checkpoint import latest
    from rlvr.config import load_config
    from rlvr.loop.checkpoint import consolidate
    from rlvr.loop.metrics import read_metrics
    from rlvr.loop.run import run
    from workers import ACTORS

    cfg = load_config([os.path.join(ROOT, "configs", "quickstart_cpu.yaml")], [
        f"model.path={model_path}", f"logging.run_dir={work_dir}", "logging.tensorboard=false",
        "logging.progress=false", f"schedule.total_steps={steps}", "schedule.percentile=0.0",
        "algorithm.credit.criterion=none", "algorithm.loss.agg=token_mean", "algorithm.loss.kl_coef=0.0",
        f"data.prompts_per_step={PROMPTS_PER_STEP}", f"algorithm.group_size={GROUP_SIZE}",
        f"trainer.lr={size.lr}", "trainer.grad_clip=1.0", f"rollout.max_tokens={size.max_tokens}",
        f"rollout.max_model_len={size.max_model_len}", "rollout.temperature=1.0", "eval.num_prompts=8",
        # CPU sdpa has no varlen kernel: a packed micro-batch pays dense [S, S] attention (BENCHMARKS.md,
        # Trainer), so pad like TRL; one micro-batch per rank (TRL: one forward over the 64 samples)
        "trainer.packing=false", "trainer.micro_batch_tokens=16384",
        # TRL computes no sampling log-probs; rlvr's only use them for the rollout/logprob_mismatch metric
        "rollout.return_logprobs=false",
        # off: forward/backward every sample, as TRL does; on (rlvr's default): leave zero-variance groups out
        f"trainer.skip_zero_advantage={str(skip_zero_advantage).lower()}",
        *RLVR_SET,  # --rlvr-set: e.g. the pipeline's best setting (BENCHMARKS.md, Pipeline)
    ])
    start = time.perf_counter()
    run(cfg, ACTORS)
    wall = time.perf_counter() - start
    rows = [r for r in read_metrics(os.path.join(work_dir, "metrics.jsonl")) if "time/step" in r]
    result = phase_medians(rows, warmup, SAMPLES)
    return {
        "step_s": result["step"], "samples_per_s": result["samples_per_s"], "wall_s": wall,
        "phases": {p: result[p] for p in (*PHASES, "train_compute", "other")},  # train_compute: inside train
        "completion_len": statistics.mean(r["response/length_mean"] for r in rows),
        "trained_frac": statistics.mean(r["train/trained_frac"] for r in rows),
        "train_reward": statistics.mean(r["reward/mean"] for r in rows[warmup:]),
        "accuracy_after": heldout_accuracy(consolidate(latest(work_dir)), model_path),
    }


RLVR_SET: List[str] = []  # key=value overrides of every rlvr run, from --rlvr-set
RUNNERS = {"trl": run_trl, "rlvr": run_rlvr,
           "rlvr_skip": lambda *a: run_rlvr(*a, skip_zero_advantage=True)}
LABELS = {"trl": "TRL GRPOTrainer", "rlvr": "rlvr, every sample trained",
          "rlvr_skip": "rlvr, zero-variance groups skipped"}


# --------------------------------------------------------------------------- report
def summarize(runs: List[Dict[str, Any]], before: float) -> Dict[str, Any]:
    keys = ("step_s", "samples_per_s", "wall_s", "completion_len", "train_reward", "accuracy_after", "trained_frac")
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    med["phases"] = {p: statistics.median(r["phases"][p] for r in runs) for p in runs[0]["phases"]}
    med["gain"] = med["accuracy_after"] - before
    return med


def report(size: Size, steps: int, warmup: int, before: float, res: Dict[str, Dict[str, Any]], repeats: int,
           model_path: str) -> str:
    """A markdown table, one row per system, and every rlvr variant's ratios to TRL."""
    over = f"medians of steps {warmup + 1}-{steps}" + (f", then of {repeats} repeats" if repeats > 1 else "")
    head = (f"### {size.name}: {steps} steps x {SAMPLES} samples, max {size.max_tokens} completion tokens, "
            f"lr {size.lr:g}; {over} (model {os.path.basename(model_path)}, "
            f"{_num_params(model_path) / 1e6:.2f}M parameters)")
    columns = ("system", "s/step", "samples/s", "wall, N steps + start-up (s)", "completion tokens", "trained samples",
               "train reward", "held-out before", "held-out after", "gain")
    lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, m in res.items():
        lines.append(f"| {LABELS[name]} | {m['step_s']:.3f} | {m['samples_per_s']:.1f} | {m['wall_s']:.0f} | "
                     f"{m['completion_len']:.1f} | {100 * m['trained_frac']:.0f}% | {m['train_reward']:.3f} | "
                     f"{100 * before:.1f}% | {100 * m['accuracy_after']:.1f}% | {100 * m['gain']:+.1f} pts |")
    t = res.get("trl")
    for name, r in res.items():
        if t is not None and name != "trl":
            lines += ["", f"{LABELS[name]} / TRL samples/s: **{r['samples_per_s'] / t['samples_per_s']:.2f}x**; "
                          f"wall incl. start-up: {t['wall_s'] / r['wall_s']:.2f}x; held-out gain "
                          f"{100 * r['gain']:+.1f} vs TRL {100 * t['gain']:+.1f} pts"]
    if RLVR_SET:
        lines += ["", "rlvr runs with: " + " ".join(RLVR_SET)]
    lines += ["", "phases (median s/step): " + " | ".join(
        f"{name} " + ", ".join(f"{k} {v:.3f}" for k, v in m["phases"].items()) for name, m in res.items())]
    return "\n".join(lines)


def _num_params(model_path: str) -> int:
    """Parameters stored in the checkpoint (tied embeddings once)."""
    from safetensors import safe_open

    with safe_open(os.path.join(model_path, "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="tiny,compute", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=10, help="RL steps at the tiny size")
    p.add_argument("--steps-compute", type=int, default=6, help="RL steps at the compute-bound size")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    p.add_argument("--systems", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    p.add_argument("--repeats", type=int, default=1, help="runs of each system per size (order alternates)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads of this process (TRL, the held-out evaluation, the model build); default: "
                        "every core, as rlvr gets them (2 trainer ranks of 1 thread; vLLM's OpenMP on every core)")
    p.add_argument("--json", default=None, help="also write every measurement to this file")
    p.add_argument("--rlvr-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an rlvr config override for its runs (repeatable), e.g. rollout.max_staleness=1")
    args = p.parse_args(argv)
    RLVR_SET[:] = args.rlvr_set
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    systems = args.systems.split(",")
    if not set(systems) <= set(RUNNERS):
        p.error(f"--systems: unknown {sorted(set(systems) - set(RUNNERS))}; valid: {', '.join(RUNNERS)}")
    results: Dict[str, Any] = {}
    reports = []
    for name in args.sizes.split(","):
        size = quickstart_size(SIZES[name])
        steps = args.steps if name == "tiny" else args.steps_compute
        if steps <= args.warmup:
            p.error(f"{name}: steps ({steps}) must exceed --warmup ({args.warmup})")
        model_path = model_for(size)
        before = heldout_accuracy(model_path, model_path)
        runs: Dict[str, List[Dict[str, Any]]] = {s: [] for s in systems}
        for rep in range(args.repeats):
            for system in (systems if rep % 2 == 0 else systems[::-1]):
                work_dir = tempfile.mkdtemp(prefix=f"vs-trl-{system}-")
                log(f"{name} repeat {rep + 1}/{args.repeats}: {system}, {steps} steps")
                try:
                    runs[system].append(RUNNERS[system](model_path, size, steps, args.warmup, work_dir))
                finally:
                    shutil.rmtree(work_dir, ignore_errors=True)
                log(f"{name} {system}: {runs[system][-1]['step_s']:.3f} s/step, "
                    f"{runs[system][-1]['samples_per_s']:.1f} samples/s")
        res = {s: summarize(rs, before) for s, rs in runs.items()}
        results[name] = {"size": asdict(size), "steps": steps, "before": before, "runs": runs, "median": res}
        reports.append(report(size, steps, args.warmup, before, res, args.repeats, model_path))
    print(f"\n# {os.cpu_count()} cpus, load avg now {os.getloadavg()[0]:.2f}\n")
    print("\n\n".join(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
