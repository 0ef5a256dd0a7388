"""Soak bench (issue 17, item 7): the reward pool under sustained hostile load, and a long run under faults.

``pool``: the reward pool of a run -- ``verifier.num_actors`` ``RewardPool`` actors made by
``RewardGroup.create`` from ``configs/quickstart_cpu.yaml`` (2 sandboxed processes each, 5 s timeout)
and fed through ``RewardGroup.submit_samples``, as the RL loop feeds them -- kept saturated for
``--minutes``: ``--in-flight`` calls of ``--batch`` answers stay queued per actor, the next one
submitted the moment one returns.  The answers are the labelled MATH-500 / GSM8K cases of
``bench/verifier_bench.py`` (shuffled once, then cycled); exactly ``--hostile`` of every batch comes
from the hostile corpus of ``tests/test_verifier_pool.py`` (``tests/data/hostile_answers.jsonl`` x the
math, gsm8k and arithmetic verifiers; expected reward 0).  ``--kill-every S`` also SIGKILLs a random
verifier process from outside every S seconds (the corpus alone never times out or crashes one).
Per ``--interval``: answers/s, the p50/p99 round trip of a call (submit to result, queueing
included: every answer of a call waits for all of it, so this is the answer latency a caller sees),
the pool's own counters (timeouts, crashes, processes replaced); every ``--sample`` seconds the RSS
and USS of the pool's processes (actor + fork server + resource tracker + verifier processes, via
psutil).  Lost = submitted - returned (a timed-out or crashed answer comes back with reward 0 and its
reason: it is not lost); wrong = an answer scored normally whose reward differs from its label.
Memory: RSS after ``--warmup`` s, at the middle and at the end, and the slope of a least-squares
line through every sample after the warm-up (MiB/min).

``run``: ``--steps`` steps of ``configs/quickstart_cpu.yaml`` through ``build_run`` + ``train_steps``
(``checkpoint.every``/``eval.every`` from the flags), with three faults at distinct steps drawn with
``--seed``: SIGKILL of a rollout engine actor, of one verifier process of the reward pool, and of a
trainer rank's actor process.  The victim's pid is read as its step starts (the actors are idle
between steps) and the kill lands a random time into the step (uniform over the previous step's
duration).  Recorded: whether the run finished with one metrics row per step; the run's own recovery
fields (``recovery/count``, ``recovery/steps_redone``, ``recovery/seconds_lost``); engine restarts;
verifier processes replaced; answers scored 0 because of a fault (``verifier/failures``); the
largest ``rollout/logprob_mismatch`` (a restarted engine must serve the synced weights); held-out
accuracy at every evaluation; wall time.  ``--no-faults``: the same run without kills; ``--baseline``:
that too, after the faulted run, and whether the two end with bit-identical parameters and metrics.

Each mode prints Markdown and writes ``--json``; both start their own local Ray (``start_ray``:
leave ``RAY_ADDRESS`` unset).  Extra ``key=value`` arguments override the config.

    python bench/soak.py pool --minutes 10 [--kill-every 60] [--batch 512] [--in-flight 2] [--json PATH]
    python bench/soak.py run --steps 200 --baseline [--seed 0] [--checkpoint-every 10] [--eval-every 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.soak_pool import CONFIG, pid_of, proc_state, soak_pool, sum_metrics
from rlvr.config import load_config


# --------------------------------------------------------------------------- run: faults at random steps
def fault_plan(seed: int, steps: int, first: int = 2) -> dict[int, str]:
    """Step (1-based, as in metrics.jsonl) -> the fault that lands in it; three distinct steps."""
    rng = random.Random(seed)
    kinds = ["rollout", "verifier", "trainer"]
    rng.shuffle(kinds)
    return dict(zip(sorted(rng.sample(range(first, steps + 1), len(kinds))), kinds))


class Faults:
    """Wraps ``RLLoop.step``: as a planned step starts, reads its victim's pid (the actors are idle
    between steps) and SIGKILLs it a random time into the step."""

    def __init__(self, r: Any, plan: dict[int, str], seed: int):
        self.r, self.plan, self.rng = r, dict(plan), random.Random(seed + 1)
        self.fired: list[dict[str, Any]] = []
        self.last_step_s, self.t0 = 1.0, time.monotonic()

    def _victim(self, kind: str) -> tuple[int, str]:
        import ray

        pools = self.r.loop.pools
        if kind in ("rollout", "trainer"):
            actors = pools.rollouts.actors if kind == "rollout" else pools.trainers.actors
            i = self.rng.randrange(len(actors))
            name = f"engine {i}" if kind == "rollout" else f"rank {i}"
            return ray.get(actors[i].__ray_call__.remote(pid_of), timeout=300), name
        i = self.rng.randrange(len(pools.reward.actors))
        pids = ray.get(pools.reward.actors[i].pids.remote(), timeout=300)
        return self.rng.choice(pids), f"actor {i}'s process"

    def _fire(self, kind: str, step: int) -> None:
        pid, victim = self._victim(kind)
        fault = {"kind": kind, "step": step, "victim": victim, "pid": pid,
                 "delay_s": self.rng.uniform(0.0, self.last_step_s)}
        self.fired.append(fault)

        def kill() -> None:
            fault["state"] = proc_state(pid)  # R: running (mid-work), S: sleeping (waiting for a call)
            os.kill(pid, signal.SIGKILL)
            fault["at_s"] = time.monotonic() - self.t0
            print(f"[soak] killed {kind} {victim} (pid {pid}, state {fault['state']}) "
                  f"{fault['delay_s']:.2f}s into step {step}", flush=True)

        timer = threading.Timer(fault["delay_s"], kill)
        timer.daemon = True
        timer.start()

    def wrap(self, step_fn: Any) -> Any:
        def step(step: int, *args: Any, **kwargs: Any) -> Any:
            kind = self.plan.pop(step + 1, None)  # once: a recovery trains the step again, unharmed
            if kind:
                self._fire(kind, step + 1)
            start = time.monotonic()
            out = step_fn(step, *args, **kwargs)
            self.last_step_s = time.monotonic() - start
            return out

        return step


def soak_run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from rlvr.loop.metrics import merge_steps, read_metrics
    from rlvr.loop.run import build_run, train_steps
    from workers import ACTORS

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="rlvr-soak-run-")
    cfg = load_config([CONFIG], [
        f"logging.run_dir={run_dir}", f"schedule.total_steps={args.steps}", f"eval.every={args.eval_every}",
        f"checkpoint.every={args.checkpoint_every}", "logging.progress=false", "logging.tensorboard=false",
        f"seed={args.seed}", f"data.seed={args.seed}", *args.overrides])
    plan = {} if args.no_faults else fault_plan(args.seed, args.steps)
    print(f"run dir {run_dir}; faults at steps {plan or 'none'}", flush=True)
    load_before, t0 = os.getloadavg(), time.monotonic()
    finished, error, counters, faults = False, "", {}, None
    try:
        r = build_run(cfg, ACTORS)
        faults = Faults(r, plan, args.seed)
        r.loop.step = faults.wrap(r.loop.step)  # the instance attribute shadows the method
        train_steps(r)
        finished = True
        pools = r.loop.pools
        counters = {"engine_restarts": pools.rollouts.restarts,
                    **sum_metrics(ray.get([a.metrics.remote() for a in pools.reward.actors]))}
    except Exception as exc:  # noqa: BLE001 -- a run that does not finish is the result
        error = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"run failed: {error}", flush=True)
    finally:
        ray.shutdown()
    wall = time.monotonic() - t0
    rows = merge_steps(read_metrics(os.path.join(run_dir, "metrics.jsonl")))

    def total(key: str) -> float:
        return sum(row.get(key, 0.0) for row in rows)

    result = {"mode": "run", "args": vars(args), "run_dir": run_dir, "finished": finished, "error": error,
              "one_row_per_step": [row["step"] for row in rows] == list(range(args.steps + 1)),
              "last_step": max((row["step"] for row in rows), default=0),
              "faults": faults.fired if faults else [],
              "recoveries": max((row.get("recovery/count", 0.0) for row in rows), default=0.0),
              "steps_redone": total("recovery/steps_redone"), "seconds_lost": total("recovery/seconds_lost"),
              "verifier_failures": total("verifier/failures"), "counters": counters,
              "max_logprob_mismatch": max(row.get("rollout/logprob_mismatch", 0.0) for row in [{}, *rows]),
              "eval": {row["step"]: row["eval/accuracy"] for row in rows if "eval/accuracy" in row},
              "train_time_s": total("time/step"), "wall_s": wall,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    print_run(result)
    return result


def compare_runs(run_a: str, run_b: str, steps: int) -> dict[str, Any]:
    """The final parameters (trainer checkpoint of step ``steps``) and the per-step metrics of two runs."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from rlvr.loop.metrics import merge_steps, read_metrics

    def params(run_dir: str) -> dict[str, Any]:
        out = os.path.join(run_dir, f"params_{steps}.pt")
        dcp_to_torch_save(os.path.join(run_dir, "checkpoints", f"step_{steps:06d}", "trainer"), out)
        return torch.load(out, weights_only=False)["model"]

    pa, pb = params(run_a), params(run_b)
    rows = [merge_steps(read_metrics(os.path.join(d, "metrics.jsonl"))) for d in (run_a, run_b)]
    keys = ("reward/mean", "train/loss", "policy/entropy", "eval/accuracy")
    same = set(pa) == set(pb)
    return {"params_bit_exact": same and all(torch.equal(pa[k], pb[k]) for k in pa),
            "params_max_abs_diff": max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)
            if same else float("nan"),
            "rows_differing": sum(any(a.get(k) != b.get(k) for k in keys) for a, b in zip(*rows))}


def print_run(r: dict[str, Any]) -> None:
    evals, c, nan = r["eval"], r["counters"], float("nan")
    faults = "; ".join(f"{f['kind']} {f['victim']} {f['delay_s']:.2f}s into step {f['step']} "
                       f"(state {f.get('state', '?')})" for f in r["faults"])
    print(f"\nfaults: {faults or 'none'}; load avg {r['loadavg_before'][0]:.2f} before, "
          f"{r['loadavg_after'][0]:.2f} after; run dir {r['run_dir']}")
    print("| finished | one row per step | recoveries | steps redone | s lost | engine restarts "
          "| verifier processes replaced | answers scored 0 by a fault | max logprob mismatch "
          "| held-out before | after | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    after = evals[max(evals)] if evals else nan
    print(f"| {'yes' if r['finished'] else 'NO'} | {r['one_row_per_step']} ({r['last_step']} steps) "
          f"| {r['recoveries']:.0f} | {r['steps_redone']:.0f} | {r['seconds_lost']:.1f} "
          f"| {c.get('engine_restarts', '-')} | {c.get('processes_replaced', nan):.0f} "
          f"| {r['verifier_failures']:.0f} | {r['max_logprob_mismatch']:.1e} "
          f"| {100 * evals.get(0, nan):.1f}% | {100 * after:.1f}% | {r['wall_s']:.0f} |")
    print("held-out accuracy by step: " + ", ".join(f"{s}: {100 * a:.1f}%" for s, a in sorted(evals.items())))
    if r["error"]:
        print(f"error: {r['error']}")
    if "baseline" in r:
        b, c = r["baseline"], r["baseline"]["compare"]
        evals = ", ".join(f"{100 * a:.1f}%" for a in b["eval"].values())
        print(f"baseline without faults ({b['wall_s']:.0f} s): held-out {evals}; final parameters bit-exact: "
              f"{c['params_bit_exact']} (max |diff| {c['params_max_abs_diff']:.1e}); steps whose "
              f"reward/loss/entropy/eval differ: {c['rows_differing']}")


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    pool = sub.add_parser("pool", help="the reward pool at full load with hostile answers")
    pool.add_argument("--minutes", type=float, default=10.0)
    pool.add_argument("--batch", type=int, default=512, help="answers per call")
    pool.add_argument("--in-flight", type=int, default=2, help="calls queued per reward actor")
    pool.add_argument("--hostile", type=float, default=0.05, help="fraction of every call from the corpus")
    pool.add_argument("--kill-every", type=float, default=0.0, help="SIGKILL a verifier process every S s")
    pool.add_argument("--interval", type=float, default=60.0, help="seconds per table row")
    pool.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    pool.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the memory fit")
    run = sub.add_parser("run", help="a quickstart run with three processes killed")
    run.add_argument("--steps", type=int, default=200)
    run.add_argument("--checkpoint-every", type=int, default=10)
    run.add_argument("--eval-every", type=int, default=50)
    run.add_argument("--no-faults", action="store_true", help="the same run without kills")
    run.add_argument("--baseline", action="store_true", help="then the same run without kills, compared")
    run.add_argument("--run-dir", default="", help="default: a new temporary directory")
    for sp in (pool, run):
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--json", default="", help="write the result here")
        sp.add_argument("overrides", nargs="*", help="key=value overrides of configs/quickstart_cpu.yaml")
    args = p.parse_args(argv)
    result = soak_pool(args) if args.mode == "pool" else soak_run(args)
    if args.mode == "run" and args.baseline and result["finished"]:
        base = soak_run(argparse.Namespace(**{**vars(args), "no_faults": True, "run_dir": ""}))
        result["baseline"] = {**base, "compare": compare_runs(result["run_dir"], base["run_dir"], args.steps)}
        print_run(result)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0 if (result["lost"] == 0 if args.mode == "pool" else result["finished"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
