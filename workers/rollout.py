"""RolloutWorker: a Ray actor owning one vLLM engine (thin shell over rlvr.rollout)."""

from __future__ import annotations

import os
from typing import List, Sequence

from rlvr.batching import Sample
from rlvr.config import RolloutConfig


class RolloutWorker:
    def __init__(self, model_path: str, cfg: RolloutConfig, index: int, run_dir: str):
        from rlvr import rollout

        os.environ.update(rollout.engine_env(run_dir, cfg))
        self.cfg = cfg
        self.engine = rollout.make_engine(model_path, cfg, seed=cfg.seed + index)

    def generate(self, prompt_ids: Sequence[List[int]], n: int, temperature: float, seeds: Sequence[int],
                 first_group: int = 0) -> List[Sample]:
        from rlvr import rollout

        return rollout.generate(self.engine, prompt_ids, n, self.cfg, temperature, seeds, first_group)

    def load_weights(self, buckets: List[bytes]) -> str:
        """Load new weights (the driver passes trainer rank 0's object ref); returns their hash."""
        hashes = self.engine.collective_rpc("rlvr_load_buckets", args=(buckets,))
        self.engine.reset_prefix_cache()
        return hashes[0]

    def weights_hash(self) -> str:
        return self.engine.collective_rpc("rlvr_weights_hash_loaded")[0]

    def pid(self) -> int:
        return os.getpid()
