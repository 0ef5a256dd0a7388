"""`rlvr sweep CONFIG.yaml [CONFIG.yaml ...] --seeds 0-4 [--base BASE.yaml ...] [--out DIR] [key=value ...]`.

Every CONFIG x seed is one `rlvr train` (``BASE... CONFIG seed=S data.seed=S key=value...``) into
its own run directory ``OUT/<config name>/seed<S>``, one after another: on this machine (a
subprocess each, so every run gets a fresh Ray), or with ``--address`` on a Ray cluster through
`rlvr submit` (the job writes its run directory, so ``OUT`` must be storage the cluster writes and
this machine reads, e.g. the shared volume of ``k8s/``).  When a run's `rlvr train` exits 0 the sweep
writes ``sweep_run.json`` into its run directory; starting the same sweep again skips those runs and
continues a half-finished one from its newest checkpoint (``resume=auto``), so a killed sweep loses
at most the steps since that run's last checkpoint.  After every run the comparison
(:mod:`rlvr.tools.compare`: ``OUT/comparison.{md,json,png}``) is rewritten from the finished runs;
`rlvr report OUT` redraws it.

Seeds: ``seed`` and ``data.seed`` are both set to S (sampling and prompt order); the model's own
initialisation stays whatever the configs say.  Exit status: 0 every run finished, 1 a run failed
(the sweep goes on with the others and names the failures at the end), 2 a usage or config error
before anything ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from launch import errors


@dataclass(frozen=True)
class SweepRun:
    method: str  # the config's file name without .yaml
    config: str
    seed: int
    run_dir: str


def parse_seeds(text: str) -> List[int]:
    """``"0-4"`` -> 0..4, ``"0,2,7"`` -> those, ``"3"`` -> [3]; mixed: ``"0-2,5"``."""
    seeds: List[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a range like 0-4, a list like 0,2,7, or both") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: expected distinct seeds, e.g. 0-4")
    return seeds


def plan(configs: Sequence[str], seeds: Sequence[int], out: str) -> List[SweepRun]:
    """Seed-major (a stopped sweep has every method at its first seeds); config names must differ."""
    names = [Path(c).stem for c in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two configs share the name {twice[0]!r}: the run dirs OUT/<name>/seedS would collide")
    return [SweepRun(name, config, seed, os.path.join(out, name, f"seed{seed}"))
            for seed in seeds for name, config in zip(names, configs)]


def train_command(run: SweepRun, base: Sequence[str], overrides: Sequence[str],
                  address: Optional[str] = None) -> List[str]:
    """The `rlvr train` (or `rlvr submit`) argv of one run; ``resume=auto`` continues a half-finished run."""
    args = [*base, run.config, f"seed={run.seed}", f"data.seed={run.seed}", f"logging.run_dir={run.run_dir}",
            "logging.progress=false", *overrides, "resume=auto"]
    if address:
        return [sys.executable, "-m", "launch.cli", "submit", *args, "--address", address]
    return [sys.executable, "-m", "launch.cli", "train", *args]


def check(runs: Sequence[SweepRun], base: Sequence[str], overrides: Sequence[str]) -> None:
    """Every distinct config loads (a typo fails here, in one line, before hours of runs)."""
    from rlvr.config import load_config

    for config in dict.fromkeys(r.config for r in runs):
        load_config([*base, config], list(overrides))


def execute(run: SweepRun, command: List[str]) -> int:
    """Run one `rlvr train`; on exit 0 leave the marker that makes a restarted sweep skip it."""
    start = time.perf_counter()
    code = subprocess.run(command, check=False).returncode
    if code == 0:
        from rlvr.tools.compare import MARKER

        with open(os.path.join(run.run_dir, MARKER), "w", encoding="utf-8") as f:
            json.dump({"method": run.method, "config": run.config, "seed": run.seed, "command": command,
                       "seconds": time.perf_counter() - start}, f, indent=1)
    return code


def sweep(runs: Sequence[SweepRun], base: Sequence[str], overrides: Sequence[str], out: str,
          address: Optional[str] = None) -> List[SweepRun]:
    """Run what is not finished, rewriting the comparison after each; return the runs that failed."""
    from rlvr.tools.compare import MARKER, write_comparison

    failed = []
    for i, run in enumerate(runs, 1):
        label = f"[sweep {i}/{len(runs)}] {run.method} seed {run.seed}"
        if os.path.isfile(os.path.join(run.run_dir, MARKER)):
            print(f"{label}: finished earlier, skipped ({run.run_dir})", flush=True)
            continue
        print(f"{label}: {run.run_dir}", flush=True)
        code = execute(run, train_command(run, base, overrides, address))
        if code != 0:
            print(f"{label}: failed with exit {code}; going on with the others", flush=True)
            failed.append(run)
            continue
        paths = write_comparison(out)
        print(f"{label}: done; comparison {paths['md']}", flush=True)
    return failed


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rlvr sweep", description="Train every CONFIG x seed and compare them.")
    p.add_argument("configs", nargs="+", metavar="CONFIG.yaml", help="one method per config (its name labels it)")
    p.add_argument("--seeds", required=True, help="e.g. 0-4 or 0,2,7")
    p.add_argument("--base", action="append", default=[], metavar="BASE.yaml",
                   help="merged under every CONFIG (repeatable), e.g. configs/quickstart_reasoning.yaml")
    p.add_argument("--out", default="runs/sweep", help="parent of the run dirs and the comparison files")
    p.add_argument("--address", default=None, help="run each through `rlvr submit --address` on a Ray cluster")
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        runs = plan(args.configs, parse_seeds(args.seeds), args.out)
        check(runs, args.base, args.overrides)
    except Exception as exc:  # a bad --seeds, a config typo, a missing file: one line, exit 2
        code = errors.report("rlvr sweep", exc, code=None if not isinstance(exc, ValueError) else 2)
        if code is None:
            raise
        return code
    failed = sweep(runs, args.base, args.overrides, args.out, args.address)
    for run in failed:
        print(f"rlvr sweep: {run.method} seed {run.seed} failed; see {run.run_dir}", file=sys.stderr)
    return 1 if failed else 0
