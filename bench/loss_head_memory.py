"""Peak memory of the fused chunked log-prob/entropy head vs the logits alone.

Question: with a 151,936-token vocabulary (hidden 896, Qwen2.5-0.5B) at 16k
tokens, does the head of :mod:`rlvr.algo.token_stats` (forward + backward: per
-token log-prob and entropy, gradients into the hidden states and the weight)
peak at most 1.5x the bytes of the fp32 ``[tokens, vocab]`` logits alone?

Variants, each forward+backward of ``sum(logprob) + sum(entropy)`` unless said:

* ``logits``: forward only, ``hidden @ weight.T`` -- the reference;
* ``naive``: full logits, ``log_softmax``, gather, entropy, autograd;
* ``fused:C``: ``hidden_logprob_entropy(..., chunk=C)``.

"Peak" is the most memory live at once *above the inputs* (hidden, weight,
targets), so it includes the weight gradient (fp32 ``[V, D]``, 0.51 GiB).
Two measurements:

1. tensor accounting, any size, no compute: the variant runs under
   ``FakeTensorMode`` inside ``torch.distributed._tools.mem_tracker.MemTracker``,
   which adds up the bytes of every live tensor storage at every op -- saved
   tensors and the largest transient included -- so 16k tokens costs no memory
   and no FLOPs;
2. real allocation, to check (1): each variant in a fresh subprocess, on CPU the
   peak resident set (``ru_maxrss``) minus the resident set just before the op
   (every tensor here is > 32 MB, so glibc maps and unmaps it directly and RSS
   follows the live tensors); on CUDA ``torch.cuda.max_memory_allocated`` minus
   the allocated bytes before.  This runs the FLOPs, so on CPU it uses fewer
   tokens (``--real-tokens``).

    python bench/loss_head_memory.py                                   # CPU
    python bench/loss_head_memory.py --device cuda --real-tokens 16384 # GPU: real at full size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Dict, List, Optional

import torch

from rlvr.algo.token_stats import hidden_logprob_entropy

VOCAB, HIDDEN = 151936, 896
GiB = 2**30


def make_inputs(tokens: int, device: str):
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(tokens, HIDDEN, device=device, generator=g).requires_grad_()
    weight = (0.02 * torch.randn(VOCAB, HIDDEN, device=device, generator=g)).requires_grad_()
    targets = torch.randint(0, VOCAB, (tokens,), device=device, generator=g)
    return hidden, weight, targets


def run_variant(variant: str, hidden, weight, targets) -> None:
    if variant == "logits":
        with torch.no_grad():
            logits = hidden @ weight.T
        del logits
        return
    if variant == "naive":
        logp = (hidden @ weight.T).log_softmax(-1)
        logprob = logp.gather(1, targets[:, None])[:, 0]
        entropy = -(logp.exp() * logp).sum(-1)
    else:
        chunk = int(variant.split(":")[1])
        logprob, entropy = hidden_logprob_entropy(hidden, weight, targets, chunk=chunk)
    (logprob.sum() + entropy.sum()).backward()


def tracked_peak(variant: str, tokens: int) -> float:
    """Bytes live at the peak, above the inputs, by tensor accounting under FakeTensorMode (no compute)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    with FakeTensorMode():
        hidden, weight, targets = make_inputs(tokens, "cpu")
        tracker = MemTracker()
        tracker.track_external(hidden, weight, targets)
        with tracker:
            run_variant(variant, hidden, weight, targets)
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    inputs = sum(t.numel() * t.element_size() for t in (hidden, weight, targets))
    return float(peak - inputs)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured_peak(variant: str, tokens: int, device: str) -> Dict[str, float]:
    """Run in a fresh process (``--child``): real peak bytes above the inputs."""
    hidden, weight, targets = make_inputs(tokens, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_variant(variant, hidden, weight, targets)
        torch.cuda.synchronize()
        return {"peak": float(torch.cuda.max_memory_allocated() - base), "grew": True}
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = _rss_bytes()
    run_variant(variant, hidden, weight, targets)
    after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": float(after_max - base), "grew": after_max > before_max}


def child_run(variant: str, tokens: int, device: str, threads: int) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--real-tokens", str(tokens),
           "--device", device, "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: List[Dict[str, object]]) -> str:
    lines = ["| variant | tokens | method | peak above inputs GiB | x fp32 logits |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['tokens']} | {r['method']} | {r['peak'] / GiB:.2f} "
                     f"| {r['peak'] / (r['tokens'] * VOCAB * 4):.2f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 4096], help="tensor-accounting sizes")
    p.add_argument("--real-tokens", type=int, default=2048, help="size of the real (allocating) runs; 0: none")
    p.add_argument("--chunks", type=int, nargs="+", default=[1024, 256], help="fused head chunk sizes")
    p.add_argument("--no-naive-real", action="store_true", help="skip the real naive run (~6x the logits)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU torch threads of the real runs (0: default)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measured_peak(args.child, args.real_tokens, args.device)))
        return 0
    variants = ["logits", "naive"] + [f"fused:{c}" for c in args.chunks]
    sizes = sorted(set(args.tokens) | ({args.real_tokens} - {0}), reverse=True)  # real runs get a twin row
    rows = [{"variant": v, "tokens": n, "method": "tensor accounting", "peak": tracked_peak(v, n)}
            for n in sizes for v in variants]
    method = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "RSS, own process"
    for v in variants if args.real_tokens else []:
        if v == "naive" and args.no_naive_real:
            continue
        r = child_run(v, args.real_tokens, args.device, args.threads)
        note = "" if r["grew"] else " (below an earlier high-water mark: a lower bound)"
        rows.append({"variant": v, "tokens": args.real_tokens, "method": method + note, "peak": r["peak"]})
    print(f"# vocab {VOCAB}, hidden {HIDDEN}, fp32 inputs; torch {torch.__version__}; peak = most bytes live at "
          "once above hidden/weight/targets, forward+backward (logits: forward only)")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
