"""The verifier process pool: order, hard timeouts, crashes, memory caps, replacement, hostile corpus.

Every test runs real worker processes.  Fault injection uses :func:`faulty_score` (a top-level
function, so the fork-server workers can import it by reference).
"""

import ctypes
import json
import os
import signal
import time
from pathlib import Path

from rlvr.verifiers import compute_reward
from rlvr.verifiers.pool import VerifierPool

CORPUS = Path(__file__).resolve().parent / "data" / "hostile_answers.jsonl"
NUMBER_GOLD = "-424242"  # gsm8k/arithmetic gold: appears nowhere in the corpus


def faulty_score(name: str, response: str, ground_truth: str) -> float:
    """A scoring function that misbehaves on request (runs inside a worker process)."""
    if response == "sleep":
        time.sleep(60)
    elif response == "c-hang":
        pow(9, 9**9)  # one long C call: no Python-level signal handler can run meanwhile
    elif response == "abort":
        os.abort()
    elif response == "segfault":
        ctypes.string_at(0)
    elif response == "exit":
        os._exit(3)
    elif response == "raise":
        raise RuntimeError("boom")
    elif response == "alloc":
        return float(len(bytearray(2 * 1024**3)))
    elif response == "pid":
        return float(os.getpid())
    return compute_reward(name, response, ground_truth)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def _rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return total / 1024


def test_results_in_input_order_match_in_process_scoring():
    requests = []
    for k in range(30):
        requests += [("math", f"so $\\boxed{{\\frac{{{k}}}{{2}}}}$", str(k / 2)),
                     ("gsm8k", f"#### {k}", str(k + k % 2)), ("arithmetic", str(k), "7")]
    with VerifierPool(num_workers=2, timeout_s=5.0) as pool:
        rewards, reasons = pool.score(requests)
        assert rewards == [compute_reward(*r) for r in requests]
        assert reasons == [""] * len(requests)
        assert sum(rewards) == 30 + 15 + 1
        assert pool.metrics()["items_scored"] == len(requests)
        assert pool.score([]) == ([], [])


def test_timeout_kills_stuck_processes_and_replaces_them():
    requests = [("arithmetic", "1", "1"), ("arithmetic", "sleep", "1"), ("arithmetic", "2", "2"),
                ("arithmetic", "c-hang", "1"), ("arithmetic", "3", "3")]
    with VerifierPool(num_workers=2, timeout_s=1.0, score_fn=faulty_score) as pool:
        before = pool.pids()
        start = time.monotonic()
        items = pool.score_items(requests)
        assert time.monotonic() - start < 2 * (1.0 + 1.0)
        assert [s.reward for s in items] == [1.0, 0.0, 1.0, 0.0, 1.0]
        assert [s.reason for s in items] == ["", "timeout", "", "timeout", ""]
        assert all(s.latency_s <= 1.0 + 1.0 for s in items)
        assert not any(_alive(pid) for pid in before if pid not in pool.pids())
        m = pool.metrics()
        assert (m["timeouts"], m["processes_replaced"], m["num_processes"]) == (2, 2, 2)
        assert pool.score([("arithmetic", "4", "4")] * 4) == ([1.0] * 4, [""] * 4)


def test_crashes_errors_and_memory_cap_are_reasons_not_failures():
    requests = [("math", r"\boxed{1}", "1"), ("math", "abort", "1"), ("math", "segfault", "1"),
                ("math", "exit", "1"), ("math", "raise", "1"), ("math", "alloc", "1"), ("nope", "1", "1"),
                ("math", r"\boxed{2}", "2")]
    with VerifierPool(num_workers=2, timeout_s=5.0, max_memory_mb=512, score_fn=faulty_score) as pool:
        rewards, reasons = pool.score(requests)
        assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        assert reasons[:4] == ["", "crashed", "crashed", "crashed"]
        assert reasons[4] == "error: RuntimeError: boom"
        assert reasons[5].startswith("error: MemoryError")  # RLIMIT_AS stopped a 2 GiB allocation
        assert reasons[6].startswith("error: ValueError: unknown verifier 'nope'")
        m = pool.metrics()
        assert (m["crashes"], m["errors"], m["processes_replaced"], m["num_processes"]) == (3, 3, 3, 2)


def test_fault_inside_a_chunk_is_charged_to_that_item_only():
    requests = [("arithmetic", str(k), str(k if k % 3 else k + 1)) for k in range(300)]
    requests[57] = ("arithmetic", "sleep", "1")
    requests[130] = ("arithmetic", "segfault", "1")
    requests[131] = ("arithmetic", "c-hang", "1")
    with VerifierPool(num_workers=2, timeout_s=1.0, score_fn=faulty_score) as pool:
        rewards, reasons = pool.score(requests)
        m = pool.metrics()
    expected = [0.0 if k % 3 == 0 else 1.0 for k in range(300)]
    for k in (57, 130, 131):
        expected[k] = 0.0
    assert rewards == expected
    assert {k: r for k, r in enumerate(reasons) if r} == {57: "timeout", 130: "crashed", 131: "timeout"}
    assert (m["timeouts"], m["crashes"], m["processes_replaced"]) == (2, 1, 3)
    assert m["items_scored"] == 300 and m["items_requeued"] > 0  # the rest of each chunk ran again


def test_batch_completes_when_every_item_kills_its_worker():
    with VerifierPool(num_workers=2, timeout_s=1.0, score_fn=faulty_score) as pool:
        rewards, reasons = pool.score([("arithmetic", "exit", "1")] * 10 + [("arithmetic", "1", "1")])
        assert rewards == [0.0] * 10 + [1.0] and reasons == ["crashed"] * 10 + [""]
        assert pool.metrics()["processes_replaced"] == 10


def test_kill_one_and_outside_kill_are_replaced():
    with VerifierPool(num_workers=2, timeout_s=5.0, score_fn=faulty_score) as pool:
        pid = pool.kill_one()
        assert pid not in pool.pids() and not _alive(pid)
        assert len(set(pool.pids())) == 2
        os.kill(pool.pids()[0], signal.SIGKILL)  # dies while idle, from outside
        time.sleep(0.2)
        rewards, reasons = pool.score([("arithmetic", "pid", "1")] * 6 + [("arithmetic", "5", "5")])
        assert set(rewards[:6]) <= set(map(float, pool.pids())) and rewards[6] == 1.0
        assert reasons == [""] * 7
        assert pool.metrics()["processes_replaced"] == 2


def load_corpus(canary: Path):
    items = []
    with open(CORPUS) as f:
        for line in f:
            row = json.loads(line)
            text = row["text"] if "text" in row else "".join(s * n for s, n in row["parts"])
            items.append((row["id"], row["kind"], text.replace("{CANARY}", str(canary))))
    return items


def test_corpus_covers_the_issue():
    items = load_corpus(Path("/nonexistent"))
    kinds = {kind for _, kind, _ in items}
    assert len(items) >= 60 and len({i for i, _, _ in items}) == len(items)
    assert {"tower", "factorial", "nesting", "huge", "unbalanced", "bytes", "matrix", "injection"} <= kinds
    assert max(len(text) for _, _, text in items) >= 1_000_000
    assert any("\x00" in text for _, _, text in items)
    assert any(text.count("{") >= 5000 for _, _, text in items)


def test_hostile_corpus_scores_zero_bounded_and_leaves_pool_healthy(tmp_path):
    canary = tmp_path / "canary"
    timeout_s = 2.0
    requests = []
    for _, _, text in load_corpus(canary):
        requests += [("math", text, "0"), ("gsm8k", text, NUMBER_GOLD), ("arithmetic", text, NUMBER_GOLD)]
    rss = []
    with VerifierPool(num_workers=2, timeout_s=timeout_s, max_memory_mb=1024) as pool:
        for _ in range(3):
            items = pool.score_items(requests)
            slow = [(r[0], r[1][:50], s) for r, s in zip(requests, items) if s.latency_s > timeout_s + 1.0]
            assert not slow
            assert [s.reward for s in items] == [0.0] * len(requests)
            assert not [s.reason for s in items if s.reason.startswith("error")]  # verifiers never raised
            rss.append(_rss_mb(pool.pids()))
        assert not canary.exists()
        m = pool.metrics()
        assert m["num_processes"] == 2 and m["items_scored"] == 3 * len(requests)
        # still answering, and still honest (no poisoned sample forged a reward)
        honest = [("math", r"\boxed{\frac{1}{2}}", "0.5"), ("math", r"\boxed{1}", "0"),
                  ("gsm8k", "#### 18", "18"), ("gsm8k", "#### 19", "18"), ("arithmetic", "7", "7")]
        assert pool.score(honest) == ([1.0, 0.0, 1.0, 0.0, 1.0], [""] * 5)
    assert max(rss[1:]) <= rss[0] + 16, rss  # MB: memory does not grow across passes
