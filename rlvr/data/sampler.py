"""Seeded, epoch-wise shuffled prompt sampler with a resumable cursor.

Design: epoch ``e`` visits every prompt once in the order
``numpy.random.default_rng([seed, e]).permutation(n)``, so the order of any
epoch is a pure function of ``(seed, e)`` and the whole state is the cursor
``(epoch, position)``.  A batch that runs past the end of an epoch continues
into the next one, so every batch has exactly ``prompts_per_step`` prompts.
Saving ``state_dict()`` and loading it into a fresh sampler over the same
prompts yields the identical continuation (checked by a test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlvr.data.adapters import Prompt


class PromptSampler:
    def __init__(self, prompts: Sequence[Prompt], prompts_per_step: int, seed: int) -> None:
        if not prompts:
            raise ValueError("PromptSampler needs at least one prompt")
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        self.prompts = list(prompts)
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.epoch = 0  # epochs started so far, minus one
        self.position = 0  # prompts of the current epoch already handed out
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next_batch(self) -> list[Prompt]:
        batch = []
        while len(batch) < self.prompts_per_step:
            if self.position == len(self.prompts):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            batch.append(self.prompts[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "num_prompts": len(self.prompts),
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["num_prompts"] != len(self.prompts):
            raise ValueError(
                f"sampler state was saved for seed={state['seed']} over {state['num_prompts']} prompts; "
                f"this sampler has seed={self.seed} over {len(self.prompts)} prompts"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
