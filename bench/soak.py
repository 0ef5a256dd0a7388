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
import dataclasses
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.config import load_config

CONFIG = str(ROOT / "configs" / "quickstart_cpu.yaml")
Case = tuple[str, str, str, float]  # (verifier, response, gold answer, expected reward)


def _pid(actor_self: Any) -> int:
    return os.getpid()


def _proc_state(pid: int) -> str:
    """R (running or runnable), S (asleep), ... from /proc; "?" when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _pctl(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope."""
    return statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else float("nan")


def _sum_metrics(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in dicts:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


# --------------------------------------------------------------------------- pool: load and processes
def load_cases(seed: int, canary: Path) -> tuple[list[Case], list[Case]]:
    """(real, hostile): the verifier bench's labelled cases, shuffled; the corpus x three verifiers."""
    from bench.verifier_bench import build_cases
    from tests.test_verifier_pool import NUMBER_GOLD, load_corpus

    real = build_cases()
    random.Random(seed).shuffle(real)  # MATH and GSM8K interleaved: no phases in the time series
    hostile = [(v, text, gold, 0.0) for _, _, text in load_corpus(canary)
               for v, gold in (("math", "0"), ("gsm8k", NUMBER_GOLD), ("arithmetic", NUMBER_GOLD))]
    return real, hostile


class Load:
    """Batches of ``size`` answers, ``round(size * hostile_frac)`` of them hostile, in random order."""

    def __init__(self, real: list[Case], hostile: list[Case], size: int, hostile_frac: float, seed: int):
        self.real, self.hostile, self.size, self.cursor = real, hostile, size, 0
        self.rng = random.Random(seed)
        self.n_hostile = round(size * hostile_frac)

    def next(self) -> tuple[list, list, list[float]]:
        from rlvr.rollout.sample import Sample

        n_real = self.size - self.n_hostile
        picks = [self.real[(self.cursor + i) % len(self.real)] for i in range(n_real)]
        picks += [self.rng.choice(self.hostile) for _ in range(self.n_hostile)]
        self.cursor += n_real
        self.rng.shuffle(picks)
        samples = [Sample(prompt_ids=[], response_ids=[], rollout_logprob=[], text=r) for _, r, _, _ in picks]
        return samples, [(v, g) for v, _, g, _ in picks], [e for _, _, _, e in picks]


def pool_memory(actor_pids: Sequence[int]) -> dict[str, float]:
    """MiB of the pool's processes: the actors, their fork server and resource tracker (children),
    the verifier processes (grandchildren: the fork server's children)."""
    import psutil

    keys = ("actor_rss", "helpers_rss", "verifiers_rss", "uss", "actor_cpu", "verifiers_cpu")
    mib = dict.fromkeys(keys, 0.0)
    for pid in actor_pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                info, parent, cpu = p.memory_full_info(), p.ppid(), p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            role = "actor" if p.pid == pid else "helpers" if parent == pid else "verifiers"
            mib[f"{role}_rss"] += info.rss / 2**20
            mib["uss"] += info.uss / 2**20
            if role != "helpers":  # CPU seconds so far (a replaced process takes its own with it)
                mib[f"{role}_cpu"] += cpu.user + cpu.system
    me = psutil.Process()  # this bench's driver, for reference
    mib["rss"] = mib["actor_rss"] + mib["helpers_rss"] + mib["verifiers_rss"]
    mib["driver_rss"], mib["driver_cpu"] = me.memory_info().rss / 2**20, sum(me.cpu_times()[:2])
    return mib


def verifier_pids(actor_pids: Sequence[int]) -> list[int]:
    import psutil

    return sorted(c.pid for pid in actor_pids for c in psutil.Process(pid).children(recursive=True)
                  if c.ppid() != pid)


def kill_a_verifier(actor_pids: Sequence[int], rng: random.Random) -> bool:
    """SIGKILL one verifier process, picked at random."""
    victims = verifier_pids(actor_pids)
    if victims:
        os.kill(rng.choice(victims), signal.SIGKILL)
    return bool(victims)


class BusySampler(threading.Thread):
    """Every ``period`` s, whether each verifier process is runnable (state R: scoring, or waiting for
    a core) or asleep (S: waiting for work).  A saturated pool is runnable ~all the time, however few
    cores other jobs leave it; sampled on its own clock, not at the calls' boundaries."""

    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period, self.pids, self.counts, self.stop = period, [], [0, 0], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            for state in map(_proc_state, list(self.pids)):
                if state in ("R", "S", "D"):
                    self.counts[0] += 1
                    self.counts[1] += state == "R"

    def take(self) -> float:
        """Runnable fraction since the last call."""
        (n, r), self.counts = self.counts, [0, 0]
        return r / n if n else float("nan")


# --------------------------------------------------------------------------- pool: the soak
class PoolSoak:
    """Keeps the reward group saturated for ``--minutes``; tallies every returned call and sample."""

    def __init__(self, group: Any, load: Load, args: argparse.Namespace):
        import ray

        self.group, self.load, self.args = group, load, args
        self.actor_pids = ray.get([a.__ray_call__.remote(_pid) for a in group.actors])
        self.rng = random.Random(args.seed + 1)
        self.tally = dict.fromkeys(("submitted", "returned", "lost", "wrong", "hostile", "kills"), 0)
        self.reasons: dict[str, int] = {}
        self.samples: list[dict[str, float]] = []
        self.intervals: list[dict[str, float]] = []
        self.round_trips: list[float] = []  # of the current interval
        self.all_round_trips: list[float] = []
        self.in_flight: dict[Any, tuple] = {}  # call ref -> (submit time, expected rewards)
        self.pending: dict[Any, dict[str, float]] = {}  # metrics ref -> the interval row it completes
        self.busy = BusySampler()

    def _submit(self) -> None:
        samples, labels, expected = self.load.next()
        self.in_flight[self.group.submit_samples(samples, labels)] = (time.monotonic(), expected)
        self.tally["submitted"] += len(expected)
        self.tally["hostile"] += self.load.n_hostile

    def _returned(self, ref: Any) -> None:
        submitted, expected = self.in_flight.pop(ref)
        try:
            rewards, reasons = self.group.wait(ref)
        except Exception as exc:  # noqa: BLE001 -- a dead actor loses its call: count it, go on
            print(f"call lost: {type(exc).__name__}: {exc}", flush=True)
            self.tally["lost"] += len(expected)
            return
        self.round_trips.append(time.monotonic() - submitted)
        self.tally["returned"] += len(rewards)
        self.tally["lost"] += len(expected) - len(rewards)
        for reward, reason, want in zip(rewards, reasons, expected):
            if reason:
                key = reason if reason in ("timeout", "crashed") else "error"
                self.reasons[key] = self.reasons.get(key, 0) + 1
            elif reward != want:
                self.tally["wrong"] += 1

    def _interval(self, t: float, returned: int, dt: float) -> None:
        """One row.  The pool's counters are asked now and filled in when they come back: they queue
        behind the calls in flight, and the driver must not wait for them."""
        row = {"t_min": t / 60, "answers_per_s": returned / dt, "rt_p50_s": _pctl(self.round_trips, 0.5),
               "rt_p99_s": _pctl(self.round_trips, 0.99), "kills": self.tally["kills"],
               "crashed": self.reasons.get("crashed", 0), "timeouts": self.reasons.get("timeout", 0),
               "rss_mib": self.samples[-1]["rss"], "uss_mib": self.samples[-1]["uss"], "replaced": 0.0,
               "runnable": self.busy.take()}
        self.intervals.append(row)
        self.pending.update({ref: row for ref in [a.metrics.remote() for a in self.group.actors]})
        self.all_round_trips += self.round_trips
        self.round_trips = []
        print(f"  {row['t_min']:.1f} min: {row['answers_per_s']:,.0f} answers/s, round trip p99 "
              f"{row['rt_p99_s']:.3f} s, verifiers runnable {row['runnable']:.2f}, "
              f"RSS {row['rss_mib']:.0f} MiB, {self.tally['lost']} lost", flush=True)

    def _counters_back(self, ref: Any) -> None:
        import ray

        self.pending.pop(ref)["replaced"] += ray.get(ref)["processes_replaced"]  # summed over actors

    def run(self) -> None:
        import ray

        a, depth, t0 = self.args, self.args.in_flight * len(self.group.actors), time.monotonic()
        end, next_sample, next_row = t0 + 60 * a.minutes, t0, t0 + a.interval
        next_kill = t0 + a.kill_every if a.kill_every else float("inf")
        row_returned, row_start = 0, t0
        self.busy.start()
        while True:
            now = time.monotonic()
            while now < end and len(self.in_flight) < depth:
                self._submit()
            last = now >= end and not self.in_flight
            if now >= next_sample or last:
                self.samples.append({"t_s": now - t0, **pool_memory(self.actor_pids)})
                self.busy.pids = verifier_pids(self.actor_pids)
                next_sample += a.sample
            if now >= next_row or (last and now - row_start > a.interval / 2):  # no stub row for the drain
                self._interval(now - t0, self.tally["returned"] - row_returned, now - row_start)
                row_returned, row_start, next_row = self.tally["returned"], now, next_row + a.interval
            if last:
                break
            if next_kill <= now < end:  # after the sample: none lands between a kill and the replacement
                self.tally["kills"] += kill_a_verifier(self.actor_pids, self.rng)
                next_kill += a.kill_every
            wake = min(next_sample, next_row, next_kill, end if now < end else float("inf"))
            ready, _ = ray.wait([*self.in_flight, *self.pending], num_returns=1, timeout=max(0.0, wake - now))
            for ref in ready:
                self._returned(ref) if ref in self.in_flight else self._counters_back(ref)
        self.seconds = time.monotonic() - t0
        self.busy.stop.set()
        for ref in list(self.pending):
            self._counters_back(ref)
        self.counters = _sum_metrics(ray.get([x.metrics.remote() for x in self.group.actors]))


def memory_summary(samples: list[dict[str, float]], warmup_s: float) -> dict[str, float]:
    body = [s for s in samples if s["t_s"] >= warmup_s] or samples
    out = {"rss_start": body[0]["rss"], "rss_mid": body[len(body) // 2]["rss"], "rss_end": body[-1]["rss"],
           "uss_start": body[0]["uss"], "uss_end": body[-1]["uss"], "samples_fitted": len(body)}
    for key in ("rss", "uss", "actor_rss", "helpers_rss", "verifiers_rss", "driver_rss"):
        out[f"{key}_slope"] = _slope([s["t_s"] / 60 for s in body], [s[key] for s in body])  # MiB/min
    half = body[len(body) // 2:]
    out["rss_slope_2nd_half"] = _slope([s["t_s"] / 60 for s in half], [s["rss"] for s in half])
    dt = max(body[-1]["t_s"] - body[0]["t_s"], 1e-9)
    for role in ("actor", "verifiers", "driver"):  # cores busy, on average, after the warm-up
        out[f"{role}_cores"] = (body[-1][f"{role}_cpu"] - body[0][f"{role}_cpu"]) / dt
    return out


def soak_pool(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from rlvr.loop.groups import RewardGroup
    from rlvr.loop.placement import start_ray
    from workers import RewardPool

    cfg = load_config([CONFIG], args.overrides)
    canary = Path(tempfile.mkdtemp(prefix="rlvr-soak-")) / "canary"
    real, hostile = load_cases(args.seed, canary)
    load, load_before = Load(real, hostile, args.batch, args.hostile, args.seed), os.getloadavg()
    start_ray(cfg)
    try:
        group = RewardGroup.create(RewardPool, cfg)
        ray.get([a.score.remote([("math", r"\boxed{1}", "1")] * 4) for a in group.actors])  # processes up
        soak = PoolSoak(group, load, args)
        print(f"{len(real)} real cases, {len(hostile)} hostile requests; {len(group.actors)} actor(s) x "
              f"{cfg.verifier.num_workers} processes, timeout {cfg.verifier.timeout_s:g} s; {args.batch} "
              f"answers a call ({load.n_hostile} hostile), {args.in_flight} in flight per actor", flush=True)
        soak.run()
    finally:
        ray.shutdown()
    t = soak.tally
    memory = memory_summary(soak.samples, args.warmup)
    if soak.counters.get("processes_replaced"):  # a replaced process took its CPU seconds with it
        memory["verifiers_cores"] = float("nan")
    result = {"mode": "pool", "args": vars(args), "verifier": dataclasses.asdict(cfg.verifier),
              "seconds": soak.seconds, **t, "reasons": soak.reasons, "pool_counters": soak.counters,
              "answers_per_s": t["returned"] / soak.seconds, "calls": len(soak.all_round_trips),
              "rt_p50_s": _pctl(soak.all_round_trips, 0.5), "rt_p99_s": _pctl(soak.all_round_trips, 0.99),
              "canary_written": canary.exists(), "memory": memory,
              "runnable": statistics.fmean(row["runnable"] for row in soak.intervals),
              "intervals": soak.intervals, "samples": soak.samples,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    print_pool(result)
    return result


def print_pool(r: dict[str, Any]) -> None:
    m, c = r["memory"], r["pool_counters"]
    print("\n| t min | answers/s | round trip p50 s | p99 s | verifiers runnable | timeouts | crashed "
          "| kills | replaced | RSS MiB | USS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for row in r["intervals"]:  # timeouts .. replaced: totals so far
        print(f"| {row['t_min']:.1f} | {row['answers_per_s']:,.0f} | {row['rt_p50_s']:.3f} "
              f"| {row['rt_p99_s']:.3f} | {row['runnable']:.2f} | {row['timeouts']} | {row['crashed']} "
              f"| {row['kills']} | {row['replaced']:.0f} | {row['rss_mib']:.0f} | {row['uss_mib']:.0f} |")
    print(f"\n{r['seconds'] / 60:.1f} min; load avg {r['loadavg_before'][0]:.2f} before, "
          f"{r['loadavg_after'][0]:.2f} after; verifier processes runnable {r['runnable']:.2f} of the time; "
          f"canary written: {r['canary_written']}")
    print("| answers returned | hostile | lost | wrong rewards | timeouts | crashed | errors | kills "
          "| processes replaced |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['returned']:,} of {r['submitted']:,} | {r['hostile']:,} | {r['lost']} | {r['wrong']} "
          f"| {c.get('timeouts', 0):.0f} | {c.get('crashes', 0):.0f} | {c.get('errors', 0):.0f} "
          f"| {r['kills']} | {c.get('processes_replaced', 0):.0f} |")
    print("\n| answers/s | round trip p50 / p99 s | RSS MiB start / mid / end | RSS slope MiB/min "
          "(2nd half) | USS slope MiB/min |\n|---|---|---|---|---|")
    print(f"| {r['answers_per_s']:,.0f} | {r['rt_p50_s']:.3f} / {r['rt_p99_s']:.3f} | {m['rss_start']:.0f} / "
          f"{m['rss_mid']:.0f} / {m['rss_end']:.0f} | {m['rss_slope']:+.2f} ({m['rss_slope_2nd_half']:+.2f}) "
          f"| {m['uss_slope']:+.2f} |")
    print(f"RSS slopes MiB/min: actor {m['actor_rss_slope']:+.2f}, fork server + tracker "
          f"{m['helpers_rss_slope']:+.2f}, verifier processes {m['verifiers_rss_slope']:+.2f}, "
          f"(bench driver {m['driver_rss_slope']:+.2f}); cores busy after the warm-up: actor "
          f"{m['actor_cores']:.2f}, verifier processes {m['verifiers_cores']:.2f}, "
          f"driver {m['driver_cores']:.2f}")


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
            return ray.get(actors[i].__ray_call__.remote(_pid), timeout=300), name
        i = self.rng.randrange(len(pools.reward.actors))
        pids = ray.get(pools.reward.actors[i].pids.remote(), timeout=300)
        return self.rng.choice(pids), f"actor {i}'s process"

    def _fire(self, kind: str, step: int) -> None:
        pid, victim = self._victim(kind)
        fault = {"kind": kind, "step": step, "victim": victim, "pid": pid,
                 "delay_s": self.rng.uniform(0.0, self.last_step_s)}
        self.fired.append(fault)

        def kill() -> None:
            fault["state"] = _proc_state(pid)  # R: running (mid-work), S: sleeping (waiting for a call)
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
                    **_sum_metrics(ray.get([a.metrics.remote() for a in pools.reward.actors]))}
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
