"""``Sample``: one generated response, as the rollout engine returns it and the loop annotates it.

A plain dataclass (no torch): rollout engines build it, the verifier fills ``reward``,
the trainer-side batching turns lists of it into micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List


@dataclass
class Sample:
    """One generated response and everything the driver learns about it."""

    prompt_ids: List[int]
    response_ids: List[int]
    rollout_logprob: List[float]  # vLLM's sampling log-probs of response_ids
    text: str = ""  # the full decoded response (what the verifier scores)
    group: int = 0  # index of the prompt this response answers
    ground_truth: str = ""  # reference answer of that prompt
    verifier: str = ""  # verifier registry name of that prompt
    reward: float = 0.0
    reason: str = ""  # why the verifier gave 0 without scoring ("timeout", ...)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)
