"""RolloutWorker: the Ray actor that owns one rollout engine (``rollout.backend``, today vLLM).

Contract (called only by :class:`rlvr.loop.groups.RolloutGroup`, which owns fan-out, retries
and re-sending weights to a restarted worker):

* ``__init__(model_path, cfg: RolloutConfig, index, run_dir)``: builds the engine registered
  as ``cfg.backend`` (``index`` offsets its seed; caches go under ``run_dir``).
* ``generate(prompt_ids, n, temperature, seeds) -> List[Sample]``: ``n`` samples per prompt,
  sample j of prompt i at ``i * n + j``; ``seeds[i]`` seeds prompt i's request.
* ``load_weights(buckets) -> str``: loads trainer rank 0's exported buckets (Ray resolves the
  object ref it is given) and returns the hash of what was loaded.
* ``weights_hash() -> str``: hash of the last weights loaded.
* ``open_weight_group(host, port, rank_offset, world_size, backend, timeout_s) -> ranks``: every
  engine worker joins trainer rank 0's stateless weight group (a rendezvous: called on every
  member at once); a second call replaces the old group.
* ``receive_weights(plan) -> {"hash", "transfer_s", "load_s"}``: receives rank 0's broadcast
  buckets straight into the engine and returns the hash of what was loaded.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from rlvr.config import RolloutConfig
from rlvr.rollout.engine import make_engine
from rlvr.rollout.sample import Sample


class RolloutWorker:
    def __init__(self, model_path: str, cfg: RolloutConfig, index: int, run_dir: str):
        self.engine = make_engine(model_path, cfg, index, run_dir)

    def generate(self, prompt_ids: Sequence[List[int]], n: int, temperature: float,
                 seeds: Sequence[int]) -> List[Sample]:
        return self.engine.generate(prompt_ids, n, temperature, seeds)

    def load_weights(self, buckets: List[bytes]) -> str:
        return self.engine.load_weights(buckets)

    def weights_hash(self) -> str:
        return self.engine.weights_hash()

    def open_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> List[int]:
        return self.engine.open_weight_group(host, port, rank_offset, world_size, backend, timeout_s)

    def receive_weights(self, plan: list) -> Dict[str, Any]:
        return self.engine.receive_weights(plan)
