"""The ``pool`` mode of ``bench/soak.py`` (see its docstring): the reward pool kept saturated with
5% hostile answers, its throughput, latency, lost answers and memory over time; and the helpers both
modes share (process pids and states, percentiles, least-squares slopes)."""

from __future__ import annotations

import argparse
import dataclasses
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

from rlvr.config import load_config  # noqa: E402

CONFIG = str(ROOT / "configs" / "quickstart_cpu.yaml")
Case = tuple[str, str, str, float]  # (verifier, response, gold answer, expected reward)


def pid_of(actor_self: Any) -> int:
    return os.getpid()


def proc_state(pid: int) -> str:
    """R (running or runnable), S (asleep), ... from /proc; "?" when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def pctl(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope."""
    return statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else float("nan")


def sum_metrics(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
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
            for state in map(proc_state, list(self.pids)):
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
        self.actor_pids = ray.get([a.__ray_call__.remote(pid_of) for a in group.actors])
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
        row = {"t_min": t / 60, "answers_per_s": returned / dt, "rt_p50_s": pctl(self.round_trips, 0.5),
               "rt_p99_s": pctl(self.round_trips, 0.99), "kills": self.tally["kills"],
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
        self.counters = sum_metrics(ray.get([x.metrics.remote() for x in self.group.actors]))


def memory_summary(samples: list[dict[str, float]], warmup_s: float) -> dict[str, float]:
    body = [s for s in samples if s["t_s"] >= warmup_s] or samples
    out = {"rss_start": body[0]["rss"], "rss_mid": body[len(body) // 2]["rss"], "rss_end": body[-1]["rss"],
           "uss_start": body[0]["uss"], "uss_end": body[-1]["uss"], "samples_fitted": len(body)}
    for key in ("rss", "uss", "actor_rss", "helpers_rss", "verifiers_rss", "driver_rss"):
        out[f"{key}slope"] = slope([s["t_s"] / 60 for s in body], [s[key] for s in body])  # MiB/min
    half = body[len(body) // 2:]
    out["rssslope_2nd_half"] = slope([s["t_s"] / 60 for s in half], [s["rss"] for s in half])
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
              "rt_p50_s": pctl(soak.all_round_trips, 0.5), "rt_p99_s": pctl(soak.all_round_trips, 0.99),
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
          f"{m['rss_mid']:.0f} / {m['rss_end']:.0f} | {m['rssslope']:+.2f} ({m['rssslope_2nd_half']:+.2f}) "
          f"| {m['ussslope']:+.2f} |")
    print(f"RSS slopes MiB/min: actor {m['actor_rssslope']:+.2f}, fork server + tracker "
          f"{m['helpers_rssslope']:+.2f}, verifier processes {m['verifiers_rssslope']:+.2f}, "
          f"(bench driver {m['driver_rssslope']:+.2f}); cores busy after the warm-up: actor "
          f"{m['actor_cores']:.2f}, verifier processes {m['verifiers_cores']:.2f}, "
          f"driver {m['driver_cores']:.2f}")
