"""Verifier benchmark: the reward pool vs math-verify on MATH-500 + GSM8K cases, in one run.

Cases (labels known by construction):
- MATH-500, per row: the gold worked solution (1), "... \\boxed{answer}" (1), and the boxed answer
  of the next row with a different answer (0);
- GSM8K test, per row: the gold solution ending "#### N" (1), "\\boxed{N}" (1), "N" with thousands
  separators in a sentence (1), "#### N.0" (1), "#### N+1" (0).

Reported: accuracy against the labels; throughput (answers/s over the whole batch, wall clock)
and p50/p99 per-answer latency (time an answer ran in its worker) of the process pool
(``--workers`` processes, a fresh pool -- cold per-process caches -- each repeat); our verifiers
in one process (caches cleared each repeat, parser warmed like the pool's fork server); and --
when ``math-verify`` is installed -- its accuracy, its throughput in one process (its signal
timeouts disabled, gold parses cached), and the agreement of the two.  The three run round-robin,
``--repeats`` times; throughput is the median.

    python bench/verifier_bench.py [--workers 2] [--repeats 3] [--limit N] [--show-disagreements 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import List, Tuple

import sympy

import rlvr.verifiers.warmup  # noqa: F401 -- the in-process run starts as warm as a pool worker
from rlvr.verifiers import compute_reward, gsm8k, math_answer, symbolic
from rlvr.verifiers.latex import normalize
from rlvr.verifiers.pool import VerifierPool

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "eval"
Case = Tuple[str, str, str, float]  # (verifier, response, gold answer, expected reward)


def _rows(name: str, limit: int) -> list:
    with open(DATA / name) as f:
        rows = [json.loads(line) for line in f]
    return rows[:limit] if limit else rows


def build_cases(limit: int = 0) -> List[Case]:
    cases: List[Case] = []
    math_rows = _rows("math500_test.jsonl", limit)
    for i, row in enumerate(math_rows):
        answer = row["answer"]
        key, j = normalize(answer).key, (i + 1) % len(math_rows)
        while normalize(math_rows[j]["answer"]).key == key:
            j = (j + 1) % len(math_rows)
        cases += [("math", row["solution"], answer, 1.0),
                  ("math", f"The answer is $\\boxed{{{answer}}}$.", answer, 1.0),
                  ("math", f"The answer is $\\boxed{{{math_rows[j]['answer']}}}$.", answer, 0.0)]
    for row in _rows("gsm8k_test.jsonl", limit):
        gold = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        n = int(gold)
        cases += [("gsm8k", row["answer"], gold, 1.0),
                  ("gsm8k", f"So the answer is $\\boxed{{{n}}}$.", gold, 1.0),
                  ("gsm8k", f"In total that is {n:,} dollars.", gold, 1.0),
                  ("gsm8k", f"#### {n}.0", gold, 1.0),
                  ("gsm8k", f"#### {n + 1}", gold, 0.0)]
    return cases


def _percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_pool(cases: List[Case], workers: int, timeout_s: float) -> dict:
    with VerifierPool(num_workers=workers, timeout_s=timeout_s) as pool:
        pool.score([("math", r"\boxed{1}", "1")] * workers)  # processes up
        start = time.perf_counter()
        items = pool.score_items([(v, r, g) for v, r, g, _ in cases])
        wall = time.perf_counter() - start
        metrics = pool.metrics()
    latencies = [s.latency_s for s in items]
    return {"rewards": [s.reward for s in items], "throughput": len(cases) / wall, "wall_s": wall,
            "p50_ms": 1e3 * _percentile(latencies, 0.50), "p99_ms": 1e3 * _percentile(latencies, 0.99),
            "timeouts": metrics["timeouts"], "crashes": metrics["crashes"]}


def bench_in_process(cases: List[Case]) -> dict:
    for cached in (math_answer._gold, symbolic.parse_answer, gsm8k.gold_number):
        cached.cache_clear()
    sympy.core.cache.clear_cache()
    start = time.perf_counter()
    rewards = [compute_reward(v, r, g) for v, r, g, _ in cases]
    wall = time.perf_counter() - start
    return {"rewards": rewards, "throughput": len(cases) / wall, "wall_s": wall}


def bench_math_verify(cases: List[Case]) -> dict:
    from math_verify import parse, verify  # optional dev dependency

    golds = {}
    start = time.perf_counter()
    rewards = []
    for _, response, gold, _ in cases:
        if gold not in golds:
            golds[gold] = parse(f"${gold}$", parsing_timeout=None)
        try:
            ok = verify(golds[gold], parse(response, parsing_timeout=None), timeout_seconds=None)
        except Exception:  # noqa: BLE001 -- count a failure as 0, as a reward function would
            ok = False
        rewards.append(1.0 if ok else 0.0)
    wall = time.perf_counter() - start
    return {"rewards": rewards, "throughput": len(cases) / wall, "wall_s": wall}


def _accuracy(rewards: List[float], cases: List[Case]) -> float:
    return sum(r == c[3] for r, c in zip(rewards, cases)) / len(cases)


def _median_run(runs: List[dict]) -> dict:
    out = dict(runs[0], runs=[round(r["throughput"]) for r in runs])
    for key in ("throughput", "wall_s", "p50_ms", "p99_ms"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def _report(cases: List[Case], rows: list, pool: dict, local: dict, mv: dict, show: int) -> None:
    print("\n| verifier | processes | accuracy vs labels | answers/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, procs, r in rows:
        lat = f"{r['p50_ms']:.2f} | {r['p99_ms']:.1f}" if "p50_ms" in r else "- | -"
        accuracy = 100 * _accuracy(r["rewards"], cases)
        print(f"| {name} | {procs} | {accuracy:.2f}% | {r['throughput']:.0f} | {lat} |  <- runs {r['runs']}")
    print(f"\npool: {pool['timeouts']:.0f} timeouts, {pool['crashes']:.0f} crashes")
    if mv is None:
        return
    agree = [a == b for a, b in zip(pool["rewards"], mv["rewards"])]
    by_set = {s: statistics.mean(a for a, c in zip(agree, cases) if c[0] == s) for s in ("math", "gsm8k")}
    print(f"agreement with math-verify: {100 * statistics.mean(agree):.2f}% "
          f"(MATH-500 {100 * by_set['math']:.2f}%, GSM8K {100 * by_set['gsm8k']:.2f}%)")
    print(f"throughput ratio: pool / math-verify = {pool['throughput'] / mv['throughput']:.1f}x, "
          f"in-process / math-verify = {local['throughput'] / mv['throughput']:.1f}x")
    shown = 0
    for ok, c, ours, theirs in zip(agree, cases, pool["rewards"], mv["rewards"]):
        if not ok and shown < show:
            shown += 1
            print(f"  disagree: ours={ours} math-verify={theirs} label={c[3]} gold={c[2]!r} "
                  f"response=...{c[1][-60:]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="verifier processes in the pool")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-answer timeout of the pool (s)")
    ap.add_argument("--repeats", type=int, default=3, help="round-robin repeats (median throughput)")
    ap.add_argument("--limit", type=int, default=0, help="rows per dataset (0: all)")
    ap.add_argument("--no-math-verify", action="store_true", help="skip the math-verify comparison")
    ap.add_argument("--show-disagreements", type=int, default=20)
    args = ap.parse_args()

    cases = build_cases(args.limit)
    n_math = sum(c[0] == "math" for c in cases)
    load_before = os.getloadavg()[0]
    runs = {"pool": [], "local": [], "mv": []}
    for _ in range(args.repeats):
        runs["pool"].append(bench_pool(cases, args.workers, args.timeout))
        runs["local"].append(bench_in_process(cases))
        assert runs["local"][-1]["rewards"] == runs["pool"][-1]["rewards"], "pool and in-process disagree"
        if not args.no_math_verify:
            try:
                runs["mv"].append(bench_math_verify(cases))
            except ImportError:
                print("math-verify is not installed: comparison skipped")
                args.no_math_verify = True
    pool, local = _median_run(runs["pool"]), _median_run(runs["local"])
    mv = _median_run(runs["mv"]) if runs["mv"] else None
    print(f"{len(cases)} cases ({n_math} MATH-500, {len(cases) - n_math} GSM8K); {os.cpu_count()} cpus; "
          f"load avg {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; medians of {args.repeats} "
          "round-robin repeats")
    rows = [("rlvr pool", args.workers, pool), ("rlvr in-process", 1, local)]
    if mv is not None:
        rows.append(("math-verify 0.9", 1, mv))
    _report(cases, rows, pool, local, mv, args.show_disagreements)


if __name__ == "__main__":
    main()
