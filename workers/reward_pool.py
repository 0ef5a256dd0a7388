"""RewardPool: the Ray actor that scores rewards, a shell over :class:`rlvr.verifiers.pool.VerifierPool`.

Contract (called by :class:`rlvr.loop.groups.RewardGroup`, which resubmits after a restart):

* ``__init__(cfg: VerifierConfig)``: starts ``cfg.num_workers`` sandboxed verifier processes.
* ``score(requests) -> (rewards, reasons)``: ``requests`` are ``(verifier, response,
  ground_truth)``; rewards in input order; a reason is "" or "timeout" / "crashed" / "error: ...".
* ``score_samples(samples, labels) -> (rewards, reasons)``: the same for generated ``Sample``s (their
  full ``text``) with ``labels[i] = (verifier, ground_truth)``; the group passes a rollout
  engine's pending result, so scoring starts the moment that engine's shard is done.
* ``metrics() -> dict``: pool counters (``processes_replaced``, ...).
* ``kill_one_process() -> pid`` and ``pids() -> [pid]``: for fault-injection tests.
* ``shutdown()``: stops the processes.

Design: the actor only unpacks and delegates, so everything below is testable without Ray.  Isolation, hard per-item timeouts,
memory caps and process replacement live in the pure-Python pool so they are testable without
Ray; the verifiers are plain functions in ``rlvr.verifiers``.  The pool's worker processes come
from a fork server, never ``fork()`` of this (threaded) actor process.  Size the actor's
``verifier.num_cpus`` to ``verifier.num_workers``: each worker process is CPU-bound.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from rlvr.config import VerifierConfig
from rlvr.rollout.sample import Sample
from rlvr.verifiers.pool import Request, VerifierPool, default_score_fn


class RewardPool:
    """Scores (verifier_name, response, ground_truth) requests in a bounded process pool."""

    def __init__(self, cfg: VerifierConfig):
        self._pool = VerifierPool(
            num_workers=cfg.num_workers,
            timeout_s=cfg.timeout_s,
            max_memory_mb=cfg.max_memory_mb,
            score_fn=default_score_fn(cfg.format_weight, cfg.gsm8k_extract),
        )

    def score(self, requests: Sequence[Request]) -> Tuple[List[float], List[str]]:
        """(rewards, reasons) in input order; reason "" or "timeout" / "crashed" / "error: ..."."""
        return self._pool.score(requests)

    def score_samples(self, samples: Sequence[Sample], labels: Sequence[Tuple[str, str]]
                      ) -> Tuple[List[float], List[str]]:
        return self._pool.score([(v, s.text, gt) for s, (v, gt) in zip(samples, labels)])

    def metrics(self) -> Dict[str, float]:
        return self._pool.metrics()

    def kill_one_process(self) -> int:
        return self._pool.kill_one()

    def pids(self) -> List[int]:
        return self._pool.pids()

    def shutdown(self) -> None:
        self._pool.close()
