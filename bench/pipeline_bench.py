"""The k-step pipeline and the weight transports, measured in one run (issue 13, item 6).

``throughput``: steps/s and samples/s for ``rollout.max_staleness`` k in {0, 1, 2} x
``weight_sync.transport`` in {object_store, collective}, at the quickstart size and at the 25M
"compute" size of ``bench/vs_trl.py`` (64 samples/step, 128-token completions), each cell a
fresh ``rlvr.loop.run.run`` in its own process (a clean Ray).  Per cell: median ``time/step``
after ``--warmup``, samples/s, the per-sync breakdown (``sync/*``: gather, pack, transfer, load,
bytes/s) and the pools' busy and overlap fractions (``pipeline/*``).  k >= 1 runs with
``off_policy=tis``.

``learning``: held-out gain of the quickstart (60 steps) for k=0, k=1 with ``tis`` and k=1 with
no correction -- which the config refuses, so this bench forces it after validation -- over
``--seeds`` seeds (``seed`` and ``data.seed``), mean +- std.

On a 2-core box both pools share the cores: overlap there moves work around rather than
adding hardware.  The projection printed beside the numbers (what the measured overlap would
give where the pools have their own hardware) is arithmetic, not a measurement.

    python bench/pipeline_bench.py throughput [--sizes tiny,compute] [--steps 12] [--warmup 3]
    python bench/pipeline_bench.py learning [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _size_overrides(size: str) -> List[str]:
    if size == "tiny":
        return []
    from vs_trl import PROMPTS_PER_STEP, GROUP_SIZE, SIZES, build_compute_model

    s = SIZES["compute"]
    return [f"model.path={build_compute_model(s)}", f"rollout.max_tokens={s.max_tokens}",
            f"rollout.max_model_len={s.max_model_len}", f"trainer.lr={s.lr}", f"data.prompts_per_step={PROMPTS_PER_STEP}",
            f"algorithm.group_size={GROUP_SIZE}", "trainer.packing=false", "trainer.micro_batch_tokens=16384",
            "eval.num_prompts=8"]


def one(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A single run in this process; ``spec``: overrides, force_none, warmup."""
    from rlvr.config import load_config
    from rlvr.loop.metrics import merge_steps, read_metrics
    from rlvr.loop.run import run
    from workers import ACTORS

    run_dir = tempfile.mkdtemp(prefix="rlvr-pipe-bench-")
    cfg = load_config([os.path.join(ROOT, "configs", "quickstart_cpu.yaml")],
                      [f"logging.run_dir={run_dir}", "logging.tensorboard=false", "logging.progress=false",
                       *spec["overrides"]])
    if spec.get("force_none"):
        cfg.algorithm.loss.off_policy = "none"  # the bench's forced, uncorrected k >= 1 (the config refuses it)
    summary = run(cfg, ACTORS)
    rows = [r for r in merge_steps(read_metrics(os.path.join(run_dir, "metrics.jsonl"))) if "time/step" in r]
    body = rows[spec.get("warmup", 0):]

    def med(key):
        vals = [r[key] for r in body if key in r]
        return statistics.median(vals) if vals else None

    keys = ("time/step", "time/generate", "time/train", "time/sync", "pipeline/staleness", "pipeline/overlap_frac",
            "pipeline/rollout_busy_frac", "pipeline/trainer_busy_frac", "sync/gather_s", "sync/pack_s",
            "sync/transfer_s", "sync/load_s", "sync/bytes_per_s", "sync/total_s")
    return {"medians": {k: med(k) for k in keys}, "samples_per_step": cfg.samples_per_step,
            "before": summary.get("eval/accuracy_before"), "after": summary.get("eval/accuracy_after")}


def _spawn(spec: Dict[str, Any]) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], cwd=ROOT, capture_output=True,
                         text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"run failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def throughput(args) -> List[Dict[str, Any]]:
    table = []
    for size in args.sizes.split(","):
        base = _size_overrides(size)
        for k in (0, 1, 2):
            for transport in ("object_store", "collective"):
                extra = [f"rollout.max_staleness={k}", f"weight_sync.transport={transport}",
                         f"schedule.total_steps={args.steps}"] + (["algorithm.loss.off_policy=tis"] if k else [])
                load = os.getloadavg()[0]
                r = _spawn({"overrides": base + extra, "warmup": args.warmup})
                m = r["medians"]
                row = {"size": size, "k": k, "transport": transport, "load": load, **m,
                       "samples_per_s": r["samples_per_step"] / m["time/step"]}
                table.append(row)
                print(f"| {size} | {k} | {transport} | {m['time/step']:.3f} | {row['samples_per_s']:.1f} | "
                      f"{m['pipeline/overlap_frac']:.2f} | {m['pipeline/rollout_busy_frac']:.2f} | "
                      f"{m['pipeline/trainer_busy_frac']:.2f} | {1e3 * (m['sync/total_s'] or 0):.1f} | "
                      f"{(m['sync/bytes_per_s'] or 0) / 2**20:.1f} | {load:.1f} |", flush=True)
    return table


def learning(args) -> Dict[str, Any]:
    variants = {"k=0": (["rollout.max_staleness=0"], False),
                "k=1 tis": (["rollout.max_staleness=1", "algorithm.loss.off_policy=tis"], False),
                "k=1 none (forced)": (["rollout.max_staleness=1", "algorithm.loss.off_policy=tis"], True)}
    out = {}
    for name, (overrides, force) in variants.items():
        gains = []
        for seed in range(args.seeds):
            r = _spawn({"overrides": [*overrides, f"seed={seed}", f"data.seed={seed}"], "force_none": force})
            gains.append(100 * (r["after"] - r["before"]))
            print(f"{name} seed {seed}: {100 * r['before']:.1f}% -> {100 * r['after']:.1f}%", flush=True)
        out[name] = {"gains": gains, "mean": statistics.mean(gains),
                     "std": statistics.stdev(gains) if len(gains) > 1 else 0.0}
        print(f"| {name} | {out[name]['mean']:+.1f} +- {out[name]['std']:.1f} | "
              f"{', '.join(f'{g:+.1f}' for g in gains)} |", flush=True)
    return out


def main(argv: List[str]) -> int:
    if argv[:1] == ["--one"]:
        print("RESULT " + json.dumps(one(json.loads(argv[1]))), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("throughput", "learning"))
    p.add_argument("--sizes", default="tiny,compute")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.2f}", flush=True)
    if args.mode == "throughput":
        print("| size | k | transport | s/step | samples/s | overlap | rollout busy | trainer busy | sync ms | "
              "sync MiB/s | load |\n|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    result = throughput(args) if args.mode == "throughput" else learning(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
