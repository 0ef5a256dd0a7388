"""The rollout engine seam: what every generation backend provides, and how requests are seeded.

Design: a backend is a class registered in ``ROLLOUT_BACKENDS`` under the name that
``rollout.backend`` selects; the Ray shell (``workers/rollout.py``) builds it and only
delegates.  Prompts arrive as token ids (tokenised once on the driver with the trainer's
tokenizer, so trainer and engine never disagree about a prompt); ``n`` samples per prompt
come back contiguously (sample j of prompt i at ``i * n + j``).  ``tests/test_rollout_contract.py``
runs every registered backend through the same checks.

Seeds: every request (one prompt, its ``n`` samples) gets :func:`request_seeds` from the run
seed, a *stream* (the training step and sampling round, or :data:`EVAL_STREAM` for held-out
evaluation) and the prompt's index in that stream.  ``rlvr train`` and ``rlvr eval`` both seed
through it, so a sample depends on neither the chunking nor the number of engines, and a
resumed run samples exactly what the original did.
"""

from __future__ import annotations

from typing import Any, Dict, List, Protocol, Sequence

from rlvr.config import RolloutConfig
from rlvr.registry import Registry
from rlvr.rollout.sample import Sample
from rlvr.rollout.vllm_engine import VLLMEngine

EVAL_STREAM = -1  # the stream of held-out evaluation (training streams are >= 0)


class RolloutEngine(Protocol):
    """One generation engine.  Built as ``cls(model_path, cfg, index, run_dir)``."""

    def generate(self, prompt_ids: Sequence[List[int]], n: int, temperature: float,
                 seeds: Sequence[int]) -> List[Sample]:
        """``n`` samples per prompt, contiguous; each with response ids, behaviour log-probs, text."""

    def load_weights(self, buckets: List[bytes]) -> str:
        """Load weight buckets (:func:`rlvr.rollout.weight_sync.to_buckets`); returns the loaded hash."""

    def weights_hash(self) -> str:
        """Hash of the last weights loaded ("" before any load)."""

    def open_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> List[int]:
        """Join trainer rank 0's weight group (:mod:`rlvr.rollout.collective`) with every worker, worker j
        as rank ``rank_offset + j``; a rendezvous: returns once all members joined.  Returns the ranks."""

    def receive_weights(self, plan: list) -> Dict[str, Any]:
        """Receive and load rank 0's broadcast buckets (``plan``: the slots of each bucket);
        returns ``{"hash", "transfer_s", "load_s"}``."""


ROLLOUT_BACKENDS: Registry[type] = Registry("rollout.backend", {"vllm": VLLMEngine})


def make_engine(model_path: str, cfg: RolloutConfig, index: int, run_dir: str) -> RolloutEngine:
    """The ``cfg.backend`` engine serving ``model_path`` (``index``: this engine's place in its pool)."""
    return ROLLOUT_BACKENDS.get(cfg.backend)(model_path, cfg, index, run_dir)


def request_seeds(run_seed: int, stream: int, count: int, start: int = 0) -> List[int]:
    """Sampling seeds of prompts ``start .. start+count-1`` of ``stream``."""
    return [(run_seed * 1_000_003 + stream * 10_007 + i) % (2**31) for i in range(start, start + count)]
