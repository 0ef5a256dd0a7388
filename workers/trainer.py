"""TrainerWorker: one rank of the trainer group (a thin shell over ``rlvr.train.engines``: FSDP2 or DeepSpeed).

Contract (called by :class:`rlvr.loop.trainer_group.TrainerGroup` on every rank at once, and by the
Scheduler actor; any rank failing fails the call):

* ``__init__(rank, world_size, cfg: TrainerConfig, seed)``: seeds torch, sets the thread count.
* ``address() -> (ip, port)``: rank 0's rendezvous address for the process group.
* ``setup(master_addr, master_port, model_path, temperature, reference=False)``: joins the group,
  loads and shards the policy with the ``trainer.engine`` (and, with ``reference``, a frozen copy of it: the
  KL reference).
* ``set_schedule(values)``: from the Scheduler, before each train call: that step's
  ``{step, percentile, decay, ...}``; ``received_schedule()`` returns every one received.
* ``compute_stats(micro_batches) -> [(sample index, old_logprob [n, T], entropy [n, T][, ref_logprob [n, T]])]``:
  no-grad pass over this rank's micro-batches (``ref_logprob`` when set up with ``reference``).
* ``train(step, mini_batches, loss_cfg, denoms, norm_len) -> metrics``: one optimizer step per
  mini-batch with the token weights and denominators it is given; refuses a step the Scheduler
  did not announce.
* ``export_weights(bucket_bytes, dtype=None) -> (buckets, hash)``: a collective; rank 0 returns the full
  state dict (cast to ``dtype`` when given) as safetensors buckets and its hash, the other ranks
  ``(None, None)``.
* ``open_weight_group(host, port, world_size, backend, timeout_s)``: rank 0 only; joins the stateless
  trainer -> engines weight group as rank 0 (a rendezvous with every engine worker).
* ``stage_weights(bucket_bytes, dtype, backend) -> staged``: a collective; rank 0 gathers, casts and
  packs the weights for broadcast and returns ``{plan, hash, metrics}``, the other ranks ``None``.
* ``send_weights() -> seconds``: rank 0 broadcasts the staged buckets over the weight group.
* ``save(path)`` / ``load(path)``: this rank's shard of model and optimizer (DCP, or DeepSpeed's format).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from rlvr.train.batching import MicroBatch
from rlvr.config import LossConfig, TrainerConfig


class TrainerWorker:
    def __init__(self, rank: int, world_size: int, cfg: TrainerConfig, seed: int):
        torch.manual_seed(seed)
        torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.received: List[Dict[str, float]] = []  # every schedule broadcast, in order

    def address(self) -> Tuple[str, int]:
        """Rank 0's (ip, free port) for the process group rendezvous."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int, model_path: str, temperature: float,
              reference: bool = False) -> None:
        from rlvr.train.engines import TRAINER_ENGINES
        from rlvr.train.parallel import init_distributed

        mesh = init_distributed(self.rank, self.world_size, master_addr, master_port, self.cfg.backend)
        device = "cuda" if mesh.device_type == "cuda" else "cpu"
        engine = TRAINER_ENGINES.get(self.cfg.engine)  # fsdp2 or deepspeed: one interface
        self.trainer = engine(model_path, self.cfg, mesh=mesh, device=device, temperature=temperature,
                              reference=reference)

    def set_schedule(self, values: Dict[str, float]) -> None:
        """Called by the Scheduler actor before each train call."""
        self.received.append(dict(values))

    def received_schedule(self) -> List[Dict[str, float]]:
        return self.received

    def compute_stats(self, micro_batches: Sequence[MicroBatch]) -> List[Tuple]:
        return self.trainer.compute_stats(micro_batches)

    def train(self, step: int, mini_batches: Sequence[Sequence[MicroBatch]], loss_cfg: LossConfig,
              denoms: Sequence[float], norm_len: int) -> Dict[str, float]:
        latest = self.received[-1] if self.received else None
        if latest is None or int(latest["step"]) != step:
            raise RuntimeError(f"trainer rank {self.rank}: no schedule broadcast for step {step} (last: {latest})")
        metrics = self.trainer.train_step(mini_batches, loss_cfg, denoms, norm_len)
        metrics.update({f"schedule/{k}": v for k, v in latest.items() if k != "step"})
        return metrics

    def export_weights(self, bucket_bytes: int, dtype: Optional[str] = None
                       ) -> Tuple[Optional[List[bytes]], Optional[str]]:
        """Collective over all ranks (call with num_returns=2); rank 0 returns (buckets, hash)."""
        from rlvr.rollout.weight_sync import to_buckets, state_dict_hash

        sd = self.trainer.full_state_dict()
        if sd is not None and dtype is not None:
            sd = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in sd.items()}
        return (None, None) if sd is None else (to_buckets(sd, bucket_bytes), state_dict_hash(sd.items()))

    def open_weight_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        from rlvr.rollout.collective import WeightGroup

        if getattr(self, "weight_group", None) is not None:
            self.weight_group.close()
        self.weight_group = WeightGroup(host, port, 0, world_size, backend, timeout_s)

    def stage_weights(self, bucket_bytes: int, dtype: str, backend: str) -> Optional[Dict[str, Any]]:
        import time

        from rlvr.rollout.transport import stage

        t0 = time.perf_counter()
        sd = self.trainer.full_state_dict()  # a collective over the FSDP ranks
        if sd is None:
            return None
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.staged = stage(sd, dtype, bucket_bytes, device, gather_s=time.perf_counter() - t0)
        return {"plan": self.staged.plan, "hash": self.staged.hash, "metrics": self.staged.metrics}

    def send_weights(self) -> float:
        staged, self.staged = self.staged, None
        return self.weight_group.send(staged.buffers)

    def save(self, path: str) -> None:
        self.trainer.save(path)

    def load(self, path: str) -> None:
        self.trainer.load(path)
