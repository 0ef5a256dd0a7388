"""Surviving failures: calls that outlive a dead actor, and a lost trainer rank recovered inside the run.

Design:
* Rollout and reward actors are restartable (Ray's ``max_restarts``), on any node their pool's
  ``label_selector`` allows.  :func:`get` resubmits a call whose actor died once the actor is back
  (:func:`wait_until_alive`).  When no labelled node has room (the node is gone, an autoscaler has
  yet to add one) the wait says so once a minute, naming the pool, its label and its resources
  (:func:`waiting_for`), and goes on when a node joins.
* Trainer ranks are one FSDP process group: a rank cannot be restarted alone.  Every call on the
  ranks fails as soon as one rank fails (:func:`gather`; the others may be blocked in a collective
  with it).  The run then recovers (:class:`Recovery`, driven by ``rlvr.loop.run.train_steps``): it
  tears the group down, creates it again with a new Scheduler and weight transport
  (``Pools.restart_trainers``), loads the last checkpoint of this run (model, optimizer, scheduler,
  sampler cursor, in-flight batches; step 0's state when there is none yet), re-syncs the engines and
  trains the lost steps again, at most ``checkpoint.max_recoveries`` times.  A checkpoint resumes
  exactly (:mod:`rlvr.loop.run`), so with ``checkpoint.every=1`` the recovered run ends with the
  parameters of an uninterrupted one; the metrics rows of the redone steps replace the lost ones.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from rlvr.config import PoolConfig

CALL_RETRIES = 2  # re-submissions of one call whose actor died
PROBE_S = 30.0  # one liveness probe of a restarting actor
WAIT_NOTICE_S = 30.0  # an actor not back after this long: say what it waits for, then once a minute
RESTART_WAIT_S = 3600.0  # give up on a restarting actor (an autoscaler may take many minutes for a GPU node)


def log(msg: str) -> None:
    print(f"[rlvr] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- calls on actors
def get(refs: Any, what: str, resubmit: Optional[Callable[[], Any]] = None, retries: int = 0) -> Any:
    """``ray.get(refs)``; when the actor died, ``resubmit()`` (which waits for the restart and
    returns fresh refs) up to ``retries`` times."""
    import ray

    dead = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
    for attempt in range(retries + 1):
        try:
            return ray.get(refs)
        except dead:
            if resubmit is None or attempt == retries:
                raise
            log(f"{what}: actor died; retrying ({attempt + 1}/{retries})")
            refs = resubmit()


def gather(refs: Sequence[Any], what: str) -> List[Any]:
    """Every rank's result of one call; fails as soon as any rank fails (the others may be waiting for
    it in a collective, and would hold ``ray.get`` until their own timeout)."""
    import ray

    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        get(ready[0], what)
    return get(list(refs), what)


def wait_until_alive(actor: Any, timeout_s: float = RESTART_WAIT_S, need: str = "") -> None:
    """Block until a restarting actor answers (a vLLM engine takes a while to come back).  Past
    ``WAIT_NOTICE_S``, and then once a minute, log ``need`` (:func:`waiting_for`): the node it needs."""
    import ray

    start = time.monotonic()
    notice = start + WAIT_NOTICE_S
    while True:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=PROBE_S)
            if need and time.monotonic() > start + WAIT_NOTICE_S:
                log(f"{need.split(':')[0]}: the actor is back after {time.monotonic() - start:.0f}s")
            return
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.GetTimeoutError):
            now = time.monotonic()
            if now > start + timeout_s:
                raise
            if need and now >= notice:
                log(f"{need} (actor restarting, {now - start:.0f}s so far)")
                notice = now + 60.0
            time.sleep(1.0)


def waiting_for(name: str, pool: PoolConfig) -> str:
    """What an actor of ``pool`` waits for when it is pending, e.g. ``rollout pool: waiting for a node
    with rlvr.io/pool=rollout and 0.5 CPU``."""
    amounts = {"CPU": pool.num_cpus, "GPU": pool.num_gpus, **pool.resources}
    parts = [",".join(f"{k}={v}" for k, v in pool.label_selector.items()),
             ", ".join(f"{v:g} {k}" for k, v in amounts.items() if v)]
    return f"{name} pool: waiting for a node with {' and '.join(p for p in parts if p) or 'room'}"


# --------------------------------------------------------------------------- a lost trainer rank
@dataclass
class Recovery:
    """The run's recovery budget and restore point: the newest checkpoint of this run (None: step 0)."""

    max_recoveries: int
    checkpoint: Optional[str] = None
    step: int = 0  # the step of ``checkpoint``
    count: int = 0  # recoveries so far
    since: float = field(default_factory=time.monotonic)  # when the restore point was reached
    fields: Dict[str, float] = field(default_factory=dict)  # recovery/* for the next metrics row

    def saved(self, path: str, step: int) -> None:
        self.checkpoint, self.step, self.since = path, step, time.monotonic()

    def lost_ranks(self, trainers: Any) -> List[int]:
        """The dead trainer ranks after a failed step ([]: the failure was something else); raises when
        ranks died but the budget is spent."""
        try:
            ranks = trainers.dead_ranks()
        except Exception:  # noqa: BLE001 - no live Ray (a test's fake pools): the failure is what it is
            return []
        if ranks and self.count >= self.max_recoveries:
            raise RuntimeError(f"trainer rank(s) {ranks} died and checkpoint.max_recoveries="
                               f"{self.max_recoveries} recoveries are used up")
        return ranks

    def recover(self, ranks: List[int], step: int, restore: Callable[[Optional[str]], int]) -> int:
        """Restore the trainers to the restore point after ``ranks`` died during step ``step + 1``
        (``restore(checkpoint)`` rebuilds them and loads it); returns the step the run continues after."""
        self.count += 1
        redo = step + 1 - self.step
        where = (f"checkpoint {self.checkpoint}" if self.checkpoint else "the initial weights (no checkpoint "
                 "yet: fresh trainers, scheduler at step 0, sampler from the start)")
        log(f"trainer rank(s) {', '.join(map(str, ranks))} died during step {step + 1}: recovery "
            f"{self.count}/{self.max_recoveries}, restarting the trainer group from {where}; "
            f"{redo} step(s) to train again")
        t0 = time.monotonic()
        resumed = restore(self.checkpoint)
        assert resumed == self.step, (resumed, self.step)
        lost = time.monotonic() - self.since
        log(f"recovered in {time.monotonic() - t0:.1f}s ({lost:.1f}s of training lost): "
            f"continuing after step {resumed}")
        self.fields = {"recovery/count": float(self.count), "recovery/steps_redone": float(redo),
                       "recovery/seconds_lost": lost}
        return resumed

    def take_fields(self) -> Dict[str, float]:
        """The ``recovery/*`` fields of the first row after a recovery (then nothing)."""
        out, self.fields = self.fields, {}
        return out
