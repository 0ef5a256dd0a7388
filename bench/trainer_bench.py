"""One training step of a Qwen2.5-shaped policy through the real trainer path.

Builds a randomly initialised ``Qwen2ForCausalLM`` from a ``Qwen2Config`` in code
(no download), wraps it exactly as a run does -- ``Trainer.from_hf_model``:
``PolicyModel`` (fused chunked log-prob/entropy head) + ``parallelize`` (FSDP2
when launched by torchrun, autocast otherwise) + AdamW -- and times the
trainer's own pieces on synthetic packed (or padded) ragged sequences:
``forward_loss`` (forward + PPO loss), ``backward``, ``optim_step`` (grad clip +
AdamW + zero_grad), with a device synchronisation between phases.  The
``old_logprob`` no-grad pass runs first, untimed in the step, reported apart.

Reported: trained tokens/s (real tokens, padding excluded, over all ranks),
model FLOP/s = 6 * N * tokens / step time, with N the parameters that take part
in matmuls (all of them for tied embeddings, else all but the input embedding);
attention score FLOPs (6 * layers * heads * head_dim * sum of squared sequence
lengths, causal) are given apart, and a second MFU adds them (at 16k-token
sequences they are ~70% of 6N for the 0.5B shape, so published MFUs that count
them are only comparable with that column); recomputation under activation
checkpointing is never counted (model FLOPs).  MFU divides by
``--peak-tflops`` (default on CUDA with bf16: 989, H100 SXM dense bf16); on CPU
there is no meaningful peak, so only the achieved FLOP/s is reported unless
``--peak-tflops`` is given.  Peak memory: ``torch.cuda.max_memory_allocated``
over the timed steps on CUDA; the process's peak RSS (``ru_maxrss``, model
build included) on CPU.

Runs without Ray or vLLM:

    python bench/trainer_bench.py --shape tiny --steps 3                     # CPU, seconds
    python bench/trainer_bench.py --shape 25m --engine deepspeed --zero-stage 3   # the DeepSpeed engine
    python bench/trainer_bench.py --shape 0.5b --device cuda --dtype bfloat16 --attn flash_attention_2
    torchrun --nproc_per_node 8 bench/trainer_bench.py --shape 1.5b --device cuda --dtype bfloat16 \\
        --activation-checkpointing       # FSDP2 on NCCL, --tokens per rank
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from rlvr.algo.losses import aggregation_denominator
from rlvr.rollout.sample import Sample
from rlvr.train.batching import build_micro_batch, pad_responses, plan_micro_batches
from rlvr.config import DeepSpeedConfig, LossConfig, TrainerConfig
from rlvr.train.engines import TRAINER_ENGINES
from rlvr.train.trainer import Trainer

QWEN = dict(vocab_size=151936, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6,
            rms_norm_eps=1e-6, max_position_embeddings=32768)
SHAPES: Dict[str, dict] = {
    # the CPU model's shape (rlvr.config.TinyModelConfig) with a small vocabulary: seconds on one core
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256, vocab_size=1024, tie_word_embeddings=False, max_position_embeddings=4096),
    # bench/vs_trl.py's compute size (25M parameters with this vocabulary)
    "25m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=1536, vocab_size=1024, tie_word_embeddings=False, max_position_embeddings=4096),
    "0.5b": dict(QWEN, hidden_size=896, num_hidden_layers=24, num_attention_heads=14, intermediate_size=4864),
    "1.5b": dict(QWEN, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, intermediate_size=8960),
}
H100_BF16_DENSE_TFLOPS = 989.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    p.add_argument("--attn", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa")
    p.add_argument("--tokens", type=int, default=None, help="trained tokens per step per rank "
                   "(default: 2048 tiny, 16384 otherwise)")
    p.add_argument("--micro-batch-tokens", type=int, default=None, help="token budget of a micro-batch "
                   "(default: 1024 tiny, 16384 otherwise)")
    p.add_argument("--max-len", type=int, default=None, help="longest sequence; lengths are uniform in "
                   "[max_len/4, max_len], 1/4 prompt (default: 256 tiny, 4096 otherwise)")
    p.add_argument("--no-packing", dest="packing", action="store_false", help="right-padded micro-batches")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--engine", choices=TRAINER_ENGINES.names(), default="fsdp2", help="trainer.engine")
    p.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=2, help="with --engine deepspeed")
    p.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the fused log-prob head")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of one device, for MFU")
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    tiny = args.shape == "tiny"
    args.tokens = args.tokens or (2048 if tiny else 16384)
    args.micro_batch_tokens = args.micro_batch_tokens or (1024 if tiny else 16384)
    args.max_len = args.max_len or (256 if tiny else 4096)
    if args.peak_tflops is None and args.device.startswith("cuda") and args.dtype == "bfloat16":
        args.peak_tflops = H100_BF16_DENSE_TFLOPS
    return args


def qwen2_config(shape: str, attn: str):
    from transformers import Qwen2Config

    return Qwen2Config(**SHAPES[shape], attn_implementation=attn)


def matmul_params(model: torch.nn.Module) -> int:
    """N of 6*N*tokens: every parameter but an untied input embedding (a lookup, not a matmul)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    tied = embed is model.get_output_embeddings().weight
    return total if tied else total - embed.numel()


def synthetic_samples(tokens: int, max_len: int, vocab: int, seed: int) -> List[Sample]:
    """Ragged samples whose input lengths (num_tokens - 1) add up to exactly ``tokens``."""
    g = torch.Generator().manual_seed(seed)
    samples, left = [], tokens
    while left > 0:
        n = min(left, int(torch.randint(max(2, max_len // 4), max_len + 1, (1,), generator=g)))
        ids = torch.randint(0, vocab, (n + 1,), generator=g).tolist()
        prompt = max(1, (n + 1) // 4)
        samples.append(Sample(prompt_ids=ids[:prompt], response_ids=ids[prompt:], rollout_logprob=[]))
        left -= n
    return samples


def setup_distributed(device: str):
    """A DP mesh under torchrun (WORLD_SIZE set), else None: (mesh, rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "WORLD_SIZE" not in os.environ:
        return None, 0, 1, device
    from rlvr.train.parallel import init_distributed

    rank = int(os.environ["RANK"])
    backend = "nccl" if device.startswith("cuda") else "gloo"
    mesh = init_distributed(rank, world, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), backend)
    if backend == "nccl":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return mesh, rank, world, device


def build_batch(args, world: int, rank: int, vocab: int):
    """Every rank's samples (the same global batch everywhere), this rank's plan, and the loss fields."""
    samples: List[Sample] = []
    for r in range(world):  # equal tokens per rank; the planner deals them round-robin by length
        samples += synthetic_samples(args.tokens, args.max_len, vocab, args.seed + r)
    while len(samples) % world:
        samples.append(Sample(prompt_ids=[0], response_ids=[0], rollout_logprob=[]))
    plan = plan_micro_batches(samples, world, args.micro_batch_tokens, packing=args.packing)[rank]
    _, mask = pad_responses(samples)
    g = torch.Generator().manual_seed(args.seed)
    fields = {"advantages": (torch.randn(len(samples), 1, generator=g) * mask).contiguous(),
              "token_weight": mask.float()}
    return samples, plan, fields


def timed_step(trainer: Trainer, mbs, denom: float, norm_len: int, sync) -> Dict[str, float]:
    """Wall seconds of the forward (+loss), backward and optimizer phases of one step."""
    out = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    trainer.policy.train()
    for mb in mbs:
        sync()
        t0 = time.perf_counter()
        loss, *_ = trainer.forward_loss(mb, LossConfig(), denom, norm_len)
        sync()
        t1 = time.perf_counter()
        trainer.backward(loss)
        sync()
        out["forward"] += t1 - t0
        out["backward"] += time.perf_counter() - t1
    t2 = time.perf_counter()
    trainer.optim_step()
    sync()
    out["optimizer"] = time.perf_counter() - t2
    out["step"] = sum(out.values())
    return out


def old_logprob(trainer: Trainer, samples, plan, fields, packing: bool) -> float:
    """Fill ``fields['old_logprob']`` with the no-grad pass (this rank's rows); returns its seconds."""
    t0 = time.perf_counter()
    old = torch.zeros(fields["token_weight"].shape)
    for index, lp, _ in trainer.compute_stats([build_micro_batch(samples, ix, packing) for ix in plan]):
        old[torch.tensor(index), : lp.shape[1]] = lp
    fields["old_logprob"] = old
    return time.perf_counter() - t0


def attention_flops(samples, plan, cfg) -> float:
    """Causal attention-score FLOPs of one fwd+bwd on this rank: 6 * L * H * hd * sum(s^2) (QK^T and PV)."""
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    sq = sum((samples[i].num_tokens - 1) ** 2 for ix in plan for i in ix)
    return 6.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * sq


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(args: argparse.Namespace) -> Dict[str, object]:
    from transformers import Qwen2ForCausalLM

    if args.threads and not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    mesh, rank, world, device = setup_distributed(args.device)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    cfg = qwen2_config(args.shape, args.attn)
    torch.manual_seed(args.seed)
    with torch.device(dev):
        model = Qwen2ForCausalLM(cfg)  # random init, fp32 master weights
    n_params, n_total = matmul_params(model), sum(p.numel() for p in model.parameters())
    tcfg = TrainerConfig(lr=1e-6, micro_batch_tokens=args.micro_batch_tokens, dtype=args.dtype,
                         attn_implementation=args.attn, activation_checkpointing=args.activation_checkpointing,
                         packing=args.packing, logprob_chunk=args.chunk, engine=args.engine,
                         deepspeed=DeepSpeedConfig(zero_stage=args.zero_stage))
    trainer = TRAINER_ENGINES.get(args.engine).from_hf_model(model, tcfg, mesh=mesh, device=device)
    samples, plan, fields = build_batch(args, world, rank, cfg.vocab_size)
    stats_s = old_logprob(trainer, samples, plan, fields, args.packing)
    mbs = [build_micro_batch(samples, ix, args.packing).with_fields(**fields) for ix in plan]
    denom = aggregation_denominator("token_mean", fields["token_weight"])
    norm_len = max(len(s.response_ids) for s in samples)
    for _ in range(args.warmup):
        timed_step(trainer, mbs, denom, norm_len, sync)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = [timed_step(trainer, mbs, denom, norm_len, sync) for _ in range(args.steps)]
    med = {k: statistics.median(t[k] for t in times) for k in times[0]}
    tokens = args.tokens * world
    flops = 6.0 * n_params * tokens / med["step"]
    attn = attention_flops(samples, plan, cfg) * world / med["step"]  # ranks hold similar sequence mixes
    peak = args.peak_tflops * 1e12 * world if args.peak_tflops else None
    result = {
        "shape": args.shape, "engine": args.engine + (f" zero-{args.zero_stage}" if args.engine == "deepspeed" else ""),
        "device": str(dev.type), "world_size": world, "dtype": args.dtype, "attn": args.attn,
        "packing": args.packing, "activation_checkpointing": args.activation_checkpointing,
        "params": n_total, "matmul_params": n_params, "tokens_per_step": tokens,
        "micro_batches_per_rank": len(mbs), "computed_tokens_per_rank": sum(mb.num_tokens for mb in mbs),
        "step_s": med["step"], "forward_s": med["forward"], "backward_s": med["backward"],
        "optimizer_s": med["optimizer"], "old_logprob_s": stats_s, "tokens_per_s": tokens / med["step"],
        "model_tflops": flops / 1e12, "attn_tflops": attn / 1e12, "peak_tflops_per_device": args.peak_tflops,
        "mfu": flops / peak if peak else None, "mfu_incl_attn": (flops + attn) / peak if peak else None,
        "peak_memory_gib": peak_memory_gib(dev), "steps": args.steps, "torch": torch.__version__,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
    }
    return result


def markdown(r: Dict[str, object]) -> str:
    mfu = f"{100 * r['mfu']:.1f}% / {100 * r['mfu_incl_attn']:.1f}%" if r["mfu"] is not None else "n/a"
    return (
        "| shape | engine | device x world | dtype | attn | packed | AC | tokens/step | step s | fwd s | bwd s | opt s "
        "| tokens/s | model TFLOP/s | MFU 6N / +attn | peak GiB |\n|" + "---|" * 16 + "\n"
        f"| {r['shape']} | {r['engine']} | {r['device']} x {r['world_size']} | {r['dtype']} | {r['attn']} | {r['packing']} "
        f"| {r['activation_checkpointing']} | {r['tokens_per_step']} | {r['step_s']:.3f} | {r['forward_s']:.3f} "
        f"| {r['backward_s']:.3f} | {r['optimizer_s']:.3f} | {r['tokens_per_s']:.0f} | {r['model_tflops']:.4g} "
        f"| {mfu} | {r['peak_memory_gib']:.2f} |"
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"# {args.shape}: {result['params']:,} params ({result['matmul_params']:,} in matmuls), "
              f"{result['micro_batches_per_rank']} micro-batches/rank, {result['computed_tokens_per_rank']} "
              f"computed tokens/rank, old_logprob pass {result['old_logprob_s']:.3f} s, attention "
              f"{result['attn_tflops']:.4g} TFLOP/s; median of {args.steps} steps")
        print(markdown(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
