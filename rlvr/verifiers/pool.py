"""A bounded process pool for verifiers: isolation, hard timeouts and memory limits from outside.

Design: the verifiers are plain functions; this pool is what makes them safe on untrusted model
output.  It is a pure library (no Ray) so the Ray shell ``workers/reward_pool.py`` stays thin.

- N worker processes from a ``forkserver`` context: the pool lives inside a Ray actor, where
  ``fork()`` of a threaded process is unsafe.  The fork server is a clean single-threaded process
  that imports sympy and the parser once (preload), so replacing a worker costs milliseconds.
- Items go to a worker in chunks over a pipe (the round trip costs more than scoring a typical
  answer); before each item the worker publishes, in one atomic 64-bit shared word, which item
  it is on and since when.  The parent waits on the pipes and the process sentinels with the
  nearest per-item deadline as timeout.  A worker past its deadline is SIGKILLed (a thread or
  ``signal.alarm`` cannot interrupt sympy inside C code) and replaced; the item it was on scores
  0.0 with reason ``"timeout"`` and the rest of its chunk is re-queued.  A worker that dies
  mid-item (segfault, ``RLIMIT_AS`` abort, a kill from outside) is replaced the same way and its
  item scores 0.0 with reason ``"crashed"``.  An exception from the scoring function scores 0.0
  with reason ``"error: ..."``.
- Workers start without re-running the owner's ``__main__`` (Python 3.11's fork server never
  preloads it, so each child would otherwise re-import the Ray worker script -- Ray and all);
  hence a scoring function must live in an importable module, not in a script.
- Each child caps its own address space with ``setrlimit(RLIMIT_AS)`` and asks the kernel to kill
  it when the fork server (and so the pool's owner) dies.
- The batch always completes; results keep the input order.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import multiprocessing as mp
import os
import resource
import signal
import sys
import time
import types
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

from rlvr.verifiers import compute_reward

Request = Tuple[str, str, str]  # (verifier name, response, ground truth)
ScoreFn = Callable[[str, str, str], float]

_KILL_WAIT_S = 2.0  # join after SIGKILL; the kernel reaps in milliseconds
_START_GRACE_S = 5.0  # extra time for a fresh worker to start (import the scoring function's module)
_POLL_S = 0.02  # re-read the progress words this often while a busy worker is between items
_PR_SET_PDEATHSIG = 1


class Scored(NamedTuple):
    reward: float
    reason: str  # "" when scored normally; "timeout", "crashed" or "error: ..." otherwise
    latency_s: float  # from dispatch to result (or to the kill)


def default_score_fn(format_weight: float = 0.0, gsm8k_extract: str = "auto") -> ScoreFn:
    """``compute_reward`` with the config's options bound (picklable, for the workers)."""
    return functools.partial(_compute, format_weight=format_weight, gsm8k_extract=gsm8k_extract)


def _compute(name: str, response: str, ground_truth: str, format_weight: float, gsm8k_extract: str) -> float:
    return compute_reward(name, response, ground_truth, format_weight=format_weight,
                          gsm8k_extract=gsm8k_extract)


# --------------------------------------------------------------------------- child side
_POS_BITS = 16  # progress word: (microseconds since the pool's epoch << 16) | position in chunk
FLUSH_S = 0.01  # a worker reports finished items at least this often (and at chunk end)


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _limit_child(max_memory_mb: int, die_with_parent: bool) -> None:
    if max_memory_mb > 0:
        limit = int(max_memory_mb) * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if die_with_parent and hasattr(_libc(), "prctl"):  # the parent is the fork server,
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # which exits with the pool's owner


def _trim_heap() -> None:
    """Give freed heap back to the OS after a chunk (a 1 MB answer must not pin 1 MB for good)."""
    if hasattr(_libc(), "malloc_trim"):  # glibc only
        _libc().malloc_trim(0)


def _send(conn: Connection, results: list) -> bool:
    try:
        conn.send(results)
        return True
    except (OSError, ValueError):  # the parent is gone
        return False


def _score_one(score_fn: ScoreFn, request: Request) -> Tuple[float, str]:
    try:
        reward = float(score_fn(*request))
    except Exception as exc:  # noqa: BLE001 -- any failure of one item is that item's 0.0
        return 0.0, f"error: {type(exc).__name__}: {exc}"[:300]
    if not math.isfinite(reward):
        return 0.0, "error: non-finite reward"
    return reward, ""


def _serve(conn: Connection, progress, slot: int, epoch: float, score_fn: ScoreFn, max_memory_mb: int,
           die_with_parent: bool) -> None:
    """Worker loop: score each received chunk of (index, request) in order, reporting
    ``(index, reward, reason, seconds)`` in batches.  Before each item it publishes which item it
    is on, and since when, in one atomic 64-bit word, so the parent can time out that very item.
    None or EOF ends the loop."""
    _limit_child(max_memory_mb, die_with_parent)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError, MemoryError):
            return
        if chunk is None:
            return
        done, last_flush = [], time.monotonic()
        for pos, (index, request) in enumerate(chunk, start=1):
            start = time.monotonic()
            if done and start - last_flush >= FLUSH_S:
                if not _send(conn, done):
                    return
                done, last_flush = [], start
            progress[slot] = (int((start - epoch) * 1e6) << _POS_BITS) | pos
            reward, reason = _score_one(score_fn, request)
            done.append((index, reward, reason, time.monotonic() - start))
        chunk = request = None  # drop the texts before trimming the heap
        progress[slot] = 0
        if not _send(conn, done):
            return
        _trim_heap()


# --------------------------------------------------------------------------- parent side
@contextlib.contextmanager
def _without_main_module():
    """Hide ``__main__`` while a child is launched, so it does not re-import the owner's script."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    sent: List[int] = field(default_factory=list)  # indices of the chunk in flight, in order
    reported: int = 0  # how many of them have come back
    active: float = 0.0  # monotonic time of the dispatch or of the latest report

    @property
    def busy(self) -> bool:
        return self.reported < len(self.sent)


@dataclass
class _Batch:
    requests: Sequence[Request]
    out: List[Optional[Scored]]
    todo: Deque[int]
    attempts: Counter = field(default_factory=Counter)


class VerifierPool:
    """``num_workers`` verifier processes with a hard per-item timeout and a memory cap each.

    Items go out in chunks (amortising the pipe round trip, which costs more than scoring a
    typical answer); each worker publishes the item it is on, so a timeout or a crash is charged
    to that item alone and the rest of its chunk is re-queued.  A worker that dies between items
    (no culprit) charges an attempt to each item it held; after ``MAX_ATTEMPTS`` such deaths an
    item is scored 0.0 as "crashed", so the batch completes even if no worker can run.
    """

    MAX_ATTEMPTS = 3
    MAX_CHUNK = 64  # items per dispatch
    MAX_CHUNK_CHARS = 4_000_000  # ... and at most this much text (a worker unpickles it under RLIMIT_AS)

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
            self._ctx.set_forkserver_preload([__name__, "rlvr.verifiers.warmup"])
        self._counts: Counter = Counter()
        self._epoch = time.monotonic()  # CLOCK_MONOTONIC is shared by all processes
        self._progress = self._ctx.RawArray(ctypes.c_int64, num_workers)
        self._workers: List[_Worker] = [self._start(i) for i in range(num_workers)]

    # ----------------------------------------------------------------- process management
    def _start(self, slot: int) -> _Worker:
        self._progress[slot] = 0
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        args = (child_end, self._progress, slot, self._epoch, self._score_fn, self._max_memory_mb,
                self._forkserver)
        process = self._ctx.Process(target=_serve, args=args, name=f"verifier-{slot}", daemon=True)
        with _without_main_module():
            process.start()
        child_end.close()
        return _Worker(process, parent_end)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(_KILL_WAIT_S)

    def _replace(self, i: int) -> None:
        self._stop(self._workers[i])
        self._workers[i].conn.close()
        self._workers[i] = self._start(i)
        self._counts["processes_replaced"] += 1

    # ----------------------------------------------------------------- bookkeeping of one worker
    def _current(self, i: int) -> Optional[Tuple[int, float]]:
        """(request index, start time) of the item worker ``i`` is on, if it has not reported it."""
        word, worker = self._progress[i], self._workers[i]
        pos = word & ((1 << _POS_BITS) - 1)
        if not worker.busy or pos == 0 or pos - 1 < worker.reported or pos > len(worker.sent):
            return None
        return worker.sent[pos - 1], self._epoch + (word >> _POS_BITS) / 1e6

    def _deadline(self, i: int) -> float:
        """An item may run ``timeout_s``; a worker not yet on any item also gets the start grace."""
        current = self._current(i)
        if current is not None:
            return current[1] + self.timeout_s
        return self._workers[i].active + self.timeout_s + _START_GRACE_S

    def _receive(self, i: int, batch: _Batch) -> None:
        """Take every report worker ``i`` has sent (also after its death: the pipe keeps them)."""
        worker = self._workers[i]
        while worker.busy and worker.conn.poll():
            try:
                results = worker.conn.recv()
            except (EOFError, OSError, ValueError):
                return
            for index, reward, reason, seconds in results:
                batch.out[index] = Scored(reward, reason, seconds)
                self._counts["items_scored"] += 1
                self._counts["errors"] += bool(reason)
            worker.reported += len(results)
            worker.active = time.monotonic()

    def _requeue(self, indices: List[int], batch: _Batch, charged: bool) -> None:
        """Put unscored items back at the front; ``charged``: no culprit was found, count an attempt."""
        for index in reversed(indices):
            batch.attempts[index] += charged
            if batch.attempts[index] >= self.MAX_ATTEMPTS:
                batch.out[index] = Scored(0.0, "crashed", 0.0)
                self._counts["crashes"] += 1
                self._counts["items_scored"] += 1
            else:
                batch.todo.appendleft(index)
                self._counts["items_requeued"] += 1

    def _abandon(self, i: int, reason: str, batch: _Batch) -> None:
        """Kill worker ``i``; charge ``reason`` to the item it was on; re-queue the rest of its chunk."""
        victim = self._current(i)
        self._stop(self._workers[i])
        self._receive(i, batch)
        culprit = victim is not None and batch.out[victim[0]] is None
        if culprit:
            batch.out[victim[0]] = Scored(0.0, reason, time.monotonic() - victim[1])
            self._counts["timeouts" if reason == "timeout" else "crashes"] += 1
            self._counts["items_scored"] += 1
        worker = self._workers[i]
        self._requeue([k for k in worker.sent[worker.reported:] if batch.out[k] is None], batch, not culprit)
        self._replace(i)

    # ----------------------------------------------------------------- scoring
    def _chunk(self, batch: _Batch) -> List[int]:
        size = max(1, min(self.MAX_CHUNK, len(batch.todo) // (2 * len(self._workers))))
        chunk, chars = [], 0
        while batch.todo and len(chunk) < size and (not chunk or chars < self.MAX_CHUNK_CHARS):
            chunk.append(batch.todo.popleft())
            chars += sum(len(x) for x in batch.requests[chunk[-1]] if isinstance(x, str))
        return chunk

    def _dispatch(self, batch: _Batch) -> None:
        for i in range(len(self._workers)):
            if not batch.todo:
                return
            if self._workers[i].busy:
                continue
            if not self._workers[i].process.is_alive():  # died while idle (e.g. killed from outside)
                self._replace(i)
            worker = self._workers[i]
            worker.sent, worker.reported, worker.active = self._chunk(batch), 0, time.monotonic()
            try:
                worker.conn.send([(k, tuple(batch.requests[k])) for k in worker.sent])
            except (OSError, ValueError):
                self._abandon(i, "crashed", batch)

    def _collect(self, batch: _Batch) -> None:
        busy = [i for i, w in enumerate(self._workers) if w.busy]
        if not busy:
            return
        # progress words change without waking us: poll while a worker has no current item
        now = time.monotonic()
        timeout = min(self._deadline(i) if self._current(i) else min(self._deadline(i), now + _POLL_S)
                      for i in busy) - now
        wait([h for i in busy for h in (self._workers[i].conn, self._workers[i].process.sentinel)],
             timeout=max(0.0, timeout))
        for i in busy:
            self._receive(i, batch)
            if not self._workers[i].busy:
                continue
            if not self._workers[i].process.is_alive():
                self._abandon(i, "crashed", batch)
            elif time.monotonic() >= self._deadline(i):
                self._abandon(i, "timeout", batch)

    def score_items(self, requests: Sequence[Request]) -> List[Scored]:
        """Score every request; always one :class:`Scored` per request, in input order.

        ``latency_s`` is the time the item ran in its worker (for a timeout or crash: until the kill).
        """
        batch = _Batch(requests, [None] * len(requests), deque(range(len(requests))))
        while batch.todo or any(w.busy for w in self._workers):
            self._dispatch(batch)
            self._collect(batch)
        self._counts["batches"] += 1
        return batch.out  # type: ignore[return-value]

    def score(self, requests: Sequence[Request]) -> Tuple[List[float], List[str]]:
        """(rewards, reasons) in input order; a reason is "" for a normally scored item."""
        scored = self.score_items(requests)
        return [s.reward for s in scored], [s.reason for s in scored]

    # ----------------------------------------------------------------- introspection
    def metrics(self) -> Dict[str, float]:
        keys = ("items_scored", "timeouts", "crashes", "errors", "processes_replaced", "items_requeued",
                "batches")
        out = {k: float(self._counts[k]) for k in keys}
        out["num_processes"] = float(sum(w.process.is_alive() for w in self._workers))
        return out

    def pids(self) -> List[int]:
        return [w.process.pid for w in self._workers]

    def kill_one(self) -> int:
        """SIGKILL one idle worker (fault injection); it is replaced at once. Returns its pid."""
        i = next((i for i, w in enumerate(self._workers) if not w.busy), 0)
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
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
