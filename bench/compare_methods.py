"""Compare RL methods on the chain-arithmetic reasoning task over several seeds, in one command.

Each (method, seed) is one ``rlvr train`` of ``configs/quickstart_reasoning.yaml`` with the method's
config merged on top and ``seed=S data.seed=S`` (the warm-started model is the same for every seed:
its own seed is ``model.tiny.seed``), run one after another.  From each run's ``metrics.jsonl`` it
takes the held-out greedy accuracy before (step 0) and after (last step), and the policy entropy
of the last ``--tail`` steps (mean of the per-step ``policy/entropy``, the trainer's mean token
entropy of the sampled responses).  It prints mean +- sample std over the seeds of the held-out
gain and of that final entropy per method, and writes every run's numbers and the summary to JSON.

    python bench/compare_methods.py --seeds 0 1 2 --methods grpo tp_schedule \
        --out runs/compare_methods/compare_methods.json

Methods are config names in ``configs/``: grpo, static_entropy80, tp_schedule, d3s, reinforce_ada.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.loop.metrics import merge_steps, read_metrics

METHODS = ("grpo", "static_entropy80", "tp_schedule", "d3s", "reinforce_ada")
BASE = "configs/quickstart_reasoning.yaml"
# Short runs, at a learning rate low enough to see the learning curve: at the quickstart's lr 1e-4 every
# method is on its plateau by the first evaluation (BENCHMARKS.md).
DEFAULT_OVERRIDES = ("schedule.total_steps=30", "eval.every=5", "trainer.lr=2e-5")
# A fresh local Ray per run: a bare ray.init() joins any Ray already running on a shared machine (another
# user's, with its own auth token) and hangs.  The pinned threads are what rlvr's own local start sets.
RUN_ENV = {"RAY_ADDRESS": "local", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_one(method: str, seed: int, run_dir: Path, extra: Sequence[str]) -> dict[str, float]:
    """Train ``method`` at ``seed`` into ``run_dir``; its held-out numbers, final entropy and time."""
    cmd = [sys.executable, "-m", "launch.cli", "train", BASE, f"configs/{method}.yaml", f"seed={seed}",
           f"data.seed={seed}", f"logging.run_dir={run_dir}", "logging.progress=false", *extra, "--fresh"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                         env={**os.environ, **RUN_ENV})
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return summarize(run_dir / "metrics.jsonl", seconds)


def summarize(path: Path, seconds: float, tail: int = 5) -> dict[str, float]:
    """Held-out before/after/gain, the mean held-out accuracy over every evaluation after step 0 (``auc``),
    the mean ``policy/entropy`` of the last ``tail`` steps, the last train accuracy and the wall time."""
    rows = merge_steps(read_metrics(str(path)))
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    entropies = [r["policy/entropy"] for r in rows if "policy/entropy" in r][-tail:]
    before, after = evals[0], evals[-1]
    return {"before": before, "after": after, "gain": after - before, "auc": statistics.fmean(evals[1:]),
            "final_entropy": sum(entropies) / len(entropies) if entropies else float("nan"),
            "train_accuracy_last": rows[-1].get("train/accuracy", float("nan")), "seconds": seconds}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, list[dict[str, float]]]) -> str:
    head = ("| method | seeds | held-out before | after | gain (pts) | mean held-out over evals (AUC) "
            "| final entropy | s/run |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for method, runs in results.items():
        keys = ("before", "after", "gain", "auc", "final_entropy")
        b, a, g, auc, e = (mean_std([r[k] for r in runs]) for k in keys)
        secs = statistics.fmean(r["seconds"] for r in runs)
        lines.append(f"| {method} | {len(runs)} | {100 * b[0]:.1f}% | {100 * a[0]:.1f}% ± {100 * a[1]:.1f} "
                     f"| {100 * g[0]:+.1f} ± {100 * g[1]:.1f} | {100 * auc[0]:.1f}% ± {100 * auc[1]:.1f} "
                     f"| {e[0]:.3f} ± {e[1]:.3f} | {secs:.0f} |")
    return "\n".join(lines)


def write_json(path: str, overrides: Sequence[str], seeds: Sequence[int],
               results: dict[str, list[dict[str, float]]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    summary = {m: {k: mean_std([r[k] for r in runs]) for k in ("gain", "auc", "final_entropy")}
               for m, runs in results.items()}
    with open(path, "w") as f:
        json.dump({"base": BASE, "overrides": list(overrides), "seeds": list(seeds), "runs": results,
                   "summary": summary, "loadavg": os.getloadavg()}, f, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs", default="runs/compare_methods", help="parent directory of the run directories")
    p.add_argument("--out", default="runs/compare_methods/compare_methods.json")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run, after "
                   f"the defaults {' '.join(DEFAULT_OVERRIDES)}")
    args = p.parse_args(argv)
    overrides = [*DEFAULT_OVERRIDES, *args.overrides]
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:  # seed-major: an interrupted bench still has every method at the first seeds
        for method in args.methods:
            r = run_one(method, seed, ROOT / args.runs / f"{method}_s{seed}", overrides)
            results.setdefault(method, []).append({"seed": seed, **r})
            print(f"{method} seed {seed}: held-out {100 * r['before']:.1f}% -> {100 * r['after']:.1f}% "
                  f"({100 * r['gain']:+.1f}), AUC {100 * r['auc']:.1f}%, "
                  f"final entropy {r['final_entropy']:.3f}, {r['seconds']:.0f}s", flush=True)
            write_json(args.out, overrides, args.seeds, results)  # after every run: a stopped bench keeps it
    print(table(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
