"""Benchmark of the token-credit step (rlvr.algo.credit) on a 1M-token padded batch.

Times ``compute_token_weight`` (score + per-trajectory threshold + weights) for
the position and entropy criteria at trajectory scope against

- one ``torch.quantile`` pass over the same number of elements, both as one
  flat 1M tensor and row-wise (``dim=1``, one quantile per trajectory, which is
  what the credit step computes), and
- a per-trajectory Python loop (the obvious implementation), timed on a
  subset of the trajectories and extrapolated linearly to the whole batch.

The goal is to stay within 2x of one quantile pass.  The machine it runs on
is shared, so the methods are timed round-robin (each repeat runs every method
once, back to back) and the ratio column is the median of the per-repeat
ratios to the row-wise quantile of the same repeat; the table also gives the
median time of each method and the load average.

    python bench/credit_bench.py [--trajectories 1024] [--max-len 1024] [--repeats 7]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from rlvr.algo.credit import CreditInputs, compute_token_weight

BASE = "torch.quantile, row-wise dim=1"


def round_robin_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Per-repeat wall times (ms) of every function, each repeat running all of them back to back."""
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def make_batch(n: int, t: int, seed: int = 0) -> CreditInputs:
    """Ragged batch: lengths uniform in [1, t], right-padded; random entropies in [0, 3)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return CreditInputs(mask, entropy=torch.rand(n, t, generator=g) * 3)


def loop_credit(criterion: str, inp: CreditInputs, rows: range, percentile: float, decay: float) -> None:
    """The per-trajectory loop the vectorised code replaces (one sort per trajectory)."""
    weight = torch.zeros(inp.token_mask.shape)
    for i in rows:
        length = int(inp.token_mask[i].sum())
        if criterion == "position":
            score = torch.arange(length, dtype=torch.float64) / length
        else:
            score = inp.entropy[i, :length]
        k = math.ceil(length * (1 - percentile) - 1e-6)
        threshold = score.sort(descending=True).values[k - 1] if k > 0 else math.inf
        weight[i, :length] = torch.where(score >= threshold, 1.0, decay)


def run(args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    """Rows (method, percentile, median ms, median ratio to the row-wise quantile)."""
    inp = make_batch(args.trajectories, args.max_len)
    n = inp.token_mask.shape[0]
    subset = range(min(args.loop_rows, n))
    scale = n / len(subset)
    rows = []
    for q in args.percentiles:
        fns = {
            "torch.quantile, flat 1-D": partial(torch.quantile, inp.entropy.reshape(-1), q),
            BASE: partial(torch.quantile, inp.entropy, q, dim=1),
            **{f"token_credit {c}": partial(compute_token_weight, c, inp, q, 0.0) for c in ("position", "entropy")},
            **{f"python loop {c} (x{scale:g} extrap.)": partial(loop_credit, c, inp, subset, q, 0.0)
               for c in ("position", "entropy")},
        }
        times = round_robin_ms(fns, args.repeats)
        for name, ts in times.items():
            ts = [t * scale for t in ts] if name.startswith("python loop") else ts
            ratio = statistics.median(t / b for t, b in zip(ts, times[BASE], strict=True))
            rows.append((name, q, statistics.median(ts), ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=1024)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-rows", type=int, default=128, help="trajectories the Python loop is timed on")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[0.99, 0.5, 0.0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads; 1 is stable on a shared machine (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = run(args)
    n_tok = args.trajectories * args.max_len
    print(f"# {args.trajectories} trajectories x {args.max_len} tokens = {n_tok} padded elements; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus; "
          f"load avg {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; medians of {args.repeats} round-robin repeats")
    print(f"| {'method':<42} | {'percentile':>10} | {'median ms':>10} | {'x row-wise quantile':>19} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 12}|{'-' * 21}|")
    for name, q, ms, ratio in rows:
        print(f"| {name:<42} | {q:>10.2f} | {ms:>10.1f} | {ratio:>19.2f} |")


if __name__ == "__main__":
    main()
