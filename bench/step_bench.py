"""RL step phases: where one step of the real loop spends its time.

Runs a config (default: the CPU quickstart) for ``--steps`` steps through ``rlvr.loop.run.run`` -- Ray,
the vLLM rollout worker, the reward pool, the FSDP2 trainers, the scheduler, exactly as
``rlvr train`` -- then reads the per-step ``time/*`` metrics the driver writes to
``run_dir/metrics.jsonl`` and reports, per phase, the median seconds over the steps after
``--warmup``: generate, verify, stats (old log-probs and entropy), credit, train, sync (weight
export + engine load) and "other" (step minus the phases: advantages, scheduler calls), with
samples/s = samples per step / median step time.  The run's own start-up, the held-out evaluations
before and after, and the final checkpoint are outside the step times; the whole wall time is
printed too.  The box is shared: the load average is printed before and after.

    python bench/step_bench.py [--steps 20] [--warmup 3] [--config configs/quickstart_cpu.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("generate", "verify", "stats", "credit", "train", "sync")


def phase_medians(rows: Sequence[Dict[str, float]], warmup: int, samples_per_step: int) -> Dict[str, float]:
    """Median seconds per phase (``time/*``) over the steps after ``warmup``, plus other and samples/s."""
    steps = [r for r in rows if "time/step" in r][warmup:]
    if not steps:
        raise ValueError(f"no step after the {warmup} warm-up steps in the metrics")
    out = {p: statistics.median(r.get(f"time/{p}", 0.0) for r in steps) for p in PHASES}
    out["other"] = statistics.median(r["time/step"] - sum(r.get(f"time/{p}", 0.0) for p in PHASES) for r in steps)
    out["step"] = statistics.median(r["time/step"] for r in steps)
    # sub-phase of train: inside trainer rank 0 (forward/backward/optimizer and collectives)
    out["train_compute"] = statistics.median(r.get("time/train_compute", 0.0) for r in steps)
    out["samples_per_s"] = samples_per_step / out["step"]
    out["measured_steps"] = len(steps)
    return out


def format_table(result: Dict[str, float]) -> str:
    lines = ["| phase    | median s | share of step |", "|----------|----------|---------------|"]
    for name in (*PHASES, "train_compute", "other", "step"):
        lines.append(f"| {name:<8} | {result[name]:8.3f} | {100 * result[name] / result['step']:12.1f}% |")
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart_cpu.yaml"))
    p.add_argument("--steps", type=int, default=20, help="RL steps to run")
    p.add_argument("--warmup", type=int, default=3, help="first steps left out of the medians")
    p.add_argument("--run-dir", default=None, help="where the run writes (default: a temporary directory, removed)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")

    from rlvr.config import load_config
    from rlvr.loop.metrics import read_metrics
    from rlvr.loop.run import run
    from workers import ACTORS

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="rlvr-step-bench-")
    cfg = load_config([args.config], [f"schedule.total_steps={args.steps}", f"logging.run_dir={run_dir}",
                                      "logging.tensorboard=false", "logging.progress=false", *args.overrides])
    load_before = os.getloadavg()
    start = time.perf_counter()
    run(cfg, ACTORS)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    result = phase_medians(read_metrics(os.path.join(run_dir, "metrics.jsonl")), args.warmup, cfg.samples_per_step)
    print(f"\n# {os.path.relpath(args.config, ROOT)}: {args.steps} steps, medians of the last "
          f"{result['measured_steps']} (warm-up {args.warmup}); {cfg.samples_per_step} samples/step, "
          f"{cfg.rollout.num_workers} rollout / {cfg.trainer.num_workers} trainer / {cfg.verifier.num_workers} "
          f"verifier workers; {os.cpu_count()} cpus, load avg {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"whole run {wall:.1f}s (start-up, 2 evaluations, checkpoint included)")
    print(format_table(result))
    print(f"samples/s: {result['samples_per_s']:.1f}  (median step {result['step']:.3f}s)")
    if args.run_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main(sys.argv[1:]))
