"""A bounded process pool for verifiers: isolation, hard timeouts and memory limits from outside.

Design: the verifiers are plain functions; this pool is what makes them safe on untrusted model
output.  It is a pure library (no Ray) so the Ray shell ``workers/reward_pool.py`` stays thin.

- N worker processes from a ``forkserver`` context: the pool lives inside a Ray actor, where
  ``fork()`` of a threaded process is unsafe.  The fork server is a clean single-threaded process
  that imports sympy and the parser once (preload), so replacing a worker costs milliseconds.
- One item at a time per worker over a pipe.  The parent waits on the pipes and the process
  sentinels with the nearest deadline as timeout.  A worker past its deadline is SIGKILLed (a
  thread or ``signal.alarm`` cannot interrupt sympy inside C code) and replaced; its item scores
  0.0 with reason ``"timeout"``.  A worker that dies mid-item (segfault, ``RLIMIT_AS`` abort, a
  kill from outside) is replaced; its item scores 0.0 with reason ``"crashed"``.  An exception
  from the scoring function scores 0.0 with reason ``"error: ..."``.
- Each child caps its own address space with ``setrlimit(RLIMIT_AS)`` and asks the kernel to kill
  it when the fork server (and so the pool's owner) dies.
- The batch always completes; results keep the input order.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing as mp
import os
import resource
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

from rlvr.verifiers import compute_reward

Request = Tuple[str, str, str]  # (verifier name, response, ground truth)
ScoreFn = Callable[[str, str, str], float]

_KILL_WAIT_S = 2.0  # join after SIGKILL; the kernel reaps in milliseconds
_PR_SET_PDEATHSIG = 1


class Scored(NamedTuple):
    reward: float
    reason: str  # "" when scored normally; "timeout", "crashed" or "error: ..." otherwise
    latency_s: float  # from dispatch to result (or to the kill)


def default_score_fn(format_weight: float = 0.0, gsm8k_extract: str = "auto") -> ScoreFn:
    """``compute_reward`` with the config's options bound (picklable, for the workers)."""
    return functools.partial(_compute, format_weight=format_weight, gsm8k_extract=gsm8k_extract)


def _compute(name: str, response: str, ground_truth: str, format_weight: float, gsm8k_extract: str) -> float:
    return compute_reward(name, response, ground_truth, format_weight=format_weight, gsm8k_extract=gsm8k_extract)


# --------------------------------------------------------------------------- child side
def _limit_child(max_memory_mb: int, die_with_parent: bool) -> None:
    if max_memory_mb > 0:
        limit = int(max_memory_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if die_with_parent:  # the parent is the fork server, which exits with the pool's owner
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def _serve(conn: Connection, score_fn: ScoreFn, max_memory_mb: int, die_with_parent: bool) -> None:
    """Worker loop: receive (index, request), send (index, reward, reason); None or EOF ends it."""
    _limit_child(max_memory_mb, die_with_parent)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, MemoryError):
            return
        if msg is None:
            return
        index, (name, response, ground_truth) = msg
        try:
            reward, reason = float(score_fn(name, response, ground_truth)), ""
            if reward != reward or reward in (float("inf"), float("-inf")):
                reward, reason = 0.0, "error: non-finite reward"
        except Exception as exc:  # noqa: BLE001 -- any failure of one item is that item's 0.0
            reward, reason = 0.0, f"error: {type(exc).__name__}: {exc}"[:300]
        del msg, response, ground_truth
        try:
            conn.send((index, reward, reason))
        except (OSError, ValueError):
            return


# --------------------------------------------------------------------------- parent side
@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    item: Optional[int] = None  # index of the request in flight
    started: float = 0.0  # monotonic dispatch time of that request


class VerifierPool:
    """``num_workers`` verifier processes with a hard per-item timeout and a memory cap each."""

    def __init__(self, num_workers: int = 1, timeout_s: float = 5.0, max_memory_mb: int = 1024,
                 score_fn: Optional[ScoreFn] = None, start_method: str = "forkserver"):
        if num_workers < 1 or timeout_s <= 0:
            raise ValueError(f"need num_workers >= 1 and timeout_s > 0, got {num_workers}, {timeout_s}")
        self.timeout_s = float(timeout_s)
        self._max_memory_mb = int(max_memory_mb)
        self._score_fn = score_fn or default_score_fn()
        self._ctx = mp.get_context(start_method)
        self._forkserver = start_method == "forkserver"
        if self._forkserver:  # effective only before this interpreter's fork server first starts
            self._ctx.set_forkserver_preload([__name__])
        self._counts: Counter = Counter()
        self._workers: List[_Worker] = [self._start() for _ in range(num_workers)]

    # ----------------------------------------------------------------- process management
    def _start(self) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_serve, args=(child_end, self._score_fn, self._max_memory_mb, self._forkserver),
            name="verifier", daemon=True)
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(_KILL_WAIT_S)
        worker.conn.close()

    def _replace(self, i: int) -> None:
        self._stop(self._workers[i])
        self._workers[i] = self._start()
        self._counts["processes_replaced"] += 1

    def _fail(self, i: int, reason: str, out: List[Optional[Scored]]) -> None:
        worker = self._workers[i]
        out[worker.item] = Scored(0.0, reason, time.monotonic() - worker.started)
        self._counts["timeouts" if reason == "timeout" else "crashes"] += 1
        self._counts["items_scored"] += 1
        self._replace(i)

    # ----------------------------------------------------------------- scoring
    def _dispatch(self, todo: Deque[int], requests: Sequence[Request], out: List[Optional[Scored]]) -> None:
        for i, worker in enumerate(self._workers):
            if not todo:
                return
            if worker.item is not None:
                continue
            if not worker.process.is_alive():  # died while idle (e.g. killed from outside)
                self._replace(i)
                worker = self._workers[i]
            worker.item, worker.started = todo.popleft(), time.monotonic()
            try:
                worker.conn.send((worker.item, tuple(requests[worker.item])))
            except (OSError, ValueError):
                self._fail(i, "crashed", out)

    def _collect(self, out: List[Optional[Scored]]) -> None:
        busy = [i for i, w in enumerate(self._workers) if w.item is not None]
        if not busy:
            return
        deadline = min(self._workers[i].started for i in busy) + self.timeout_s
        handles = [h for i in busy for h in (self._workers[i].conn, self._workers[i].process.sentinel)]
        wait(handles, timeout=max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        for i in busy:
            worker = self._workers[i]
            if worker.conn.poll():
                try:
                    index, reward, reason = worker.conn.recv()
                except (EOFError, OSError, ValueError):
                    self._fail(i, "crashed", out)
                    continue
                out[index] = Scored(reward, reason, now - worker.started)
                self._counts["items_scored"] += 1
                self._counts["errors"] += bool(reason)
                worker.item = None
            elif not worker.process.is_alive():
                self._fail(i, "crashed", out)
            elif now - worker.started >= self.timeout_s:
                self._fail(i, "timeout", out)

    def score_items(self, requests: Sequence[Request]) -> List[Scored]:
        """Score every request; always returns one :class:`Scored` per request, in order."""
        out: List[Optional[Scored]] = [None] * len(requests)
        todo: Deque[int] = deque(range(len(requests)))
        while todo or any(w.item is not None for w in self._workers):
            self._dispatch(todo, requests, out)
            self._collect(out)
        self._counts["batches"] += 1
        return out  # type: ignore[return-value]

    def score(self, requests: Sequence[Request]) -> Tuple[List[float], List[str]]:
        """(rewards, reasons) in input order; a reason is "" for a normally scored item."""
        scored = self.score_items(requests)
        return [s.reward for s in scored], [s.reason for s in scored]

    # ----------------------------------------------------------------- introspection
    def metrics(self) -> Dict[str, float]:
        keys = ("items_scored", "timeouts", "crashes", "errors", "processes_replaced", "batches")
        out = {k: float(self._counts[k]) for k in keys}
        out["num_processes"] = float(sum(w.process.is_alive() for w in self._workers))
        return out

    def pids(self) -> List[int]:
        return [w.process.pid for w in self._workers]

    def kill_one(self) -> int:
        """SIGKILL one idle worker (fault injection); it is replaced at once. Returns its pid."""
        i = next((i for i, w in enumerate(self._workers) if w.item is None), 0)
        pid = self._workers[i].process.pid
        os.kill(pid, signal.SIGKILL)
        self._workers[i].process.join(_KILL_WAIT_S)
        self._replace(i)
        return pid

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(0.5)
            self._stop(worker)
        self._workers = []

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
