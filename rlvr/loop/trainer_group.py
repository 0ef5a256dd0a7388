"""The trainer pool (FSDP2 or DeepSpeed ranks, gang-scheduled) and the Scheduler actor it answers to.

Design: all ranks are called together and any rank failing fails the call, so the run can
rebuild the group (:mod:`rlvr.loop.recovery`); the Scheduler actor is the one clock, pinned to
the driver's node so that losing a pool node never loses the global step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rlvr.config import RLConfig
from rlvr.loop.placement import actor_options
from rlvr.loop.recovery import gather, get, log, waiting_for

@dataclass
class WeightExport:
    """Trainer rank 0's exported weight buckets (an object ref the engines read directly) and its hash."""

    buckets: Any
    hash_refs: List[Any]

    def hash(self) -> str:
        return gather(self.hash_refs, "trainer (export_weights)")[0]


class TrainerGroup:
    """The trainer ranks (one FSDP2 process group), gang-scheduled in one placement group."""

    def __init__(self, actors: Sequence[Any], placement_group: Any = None):
        self.actors, self.placement_group = list(actors), placement_group

    @classmethod
    def create(cls, actor_cls: type, cfg: RLConfig, model_path: str) -> "TrainerGroup":
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        t, n = cfg.trainer, cfg.trainer.num_workers
        bundle = {k: v for k, v in {"CPU": t.num_cpus, "GPU": t.num_gpus, **t.resources}.items() if v}
        pg = placement_group([bundle] * n, strategy="PACK",
                             bundle_label_selector=[dict(t.label_selector)] * n if t.label_selector else None)
        ready = pg.ready()
        while not ray.wait([ready], timeout=60.0)[0]:  # the autoscaler case: say what the gang waits for
            log(f"{waiting_for('trainer', t)} for each of {n} rank(s) (placement group pending)")
        remote = ray.remote(actor_cls)
        actors = [remote.options(**actor_options(t), scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=rank)).remote(rank, n, t, cfg.seed) for rank in range(n)]
        addr, port = ray.get(actors[0].address.remote())
        reference = cfg.algorithm.loss.kl_coef > 0  # the KL's frozen reference policy; none without a KL term
        group = cls(actors, pg)
        gather([a.setup.remote(addr, port, model_path, cfg.rollout.temperature, reference) for a in actors],
               "trainer (setup)")
        return group

    def __len__(self) -> int:
        return len(self.actors)

    def compute_stats(self, per_rank: Sequence[Sequence[Any]]) -> List[Any]:
        """Old log-probs/entropy (and reference log-probs with a KL term): rank r gets ``per_rank[r]``'s
        micro-batches; one list per rank."""
        refs = [a.compute_stats.remote(mbs) for a, mbs in zip(self.actors, per_rank)]
        return gather(refs, "trainer (stats)")

    def train(self, step: int, per_rank: Sequence[Sequence[Any]], loss_cfg: Any, denoms: Sequence[float],
              norm_len: int) -> Dict[str, float]:
        """One optimizer step per mini-batch on every rank; returns rank 0's metrics."""
        refs = [a.train.remote(step, mbs, loss_cfg, denoms, norm_len) for a, mbs in zip(self.actors, per_rank)]
        return gather(refs, "trainer (train)")[0]

    def export_weights(self, bucket_bytes: int, dtype: Optional[str] = None) -> WeightExport:
        """Rank 0's full state dict (cast to ``dtype`` if given) as safetensors buckets in the object store."""
        outs = [a.export_weights.options(num_returns=2).remote(bucket_bytes, dtype) for a in self.actors]
        return WeightExport(outs[0][0], [h for _, h in outs])

    def weight_group_address(self) -> Tuple[str, int]:
        """Rank 0's (ip, free port): the rendezvous of the trainer -> engines weight group."""
        return get(self.actors[0].address.remote(), "trainer rank 0 (address)")

    def open_weight_group_async(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> Any:
        """Rank 0 joins the weight group as rank 0; a ref, to wait on together with the engines'."""
        return self.actors[0].open_weight_group.remote(host, port, world_size, backend, timeout_s)

    def stage_weights(self, bucket_bytes: int, dtype: str, backend: str) -> Dict[str, Any]:
        """Gather (every rank) and pack (rank 0) for a broadcast; rank 0's ``{plan, hash, metrics}``."""
        return gather([a.stage_weights.remote(bucket_bytes, dtype, backend) for a in self.actors],
                      "trainer (stage_weights)")[0]

    def send_weights_async(self) -> Any:
        return self.actors[0].send_weights.remote()

    def received_schedules(self) -> List[List[Dict[str, float]]]:
        return gather([a.received_schedule.remote() for a in self.actors], "trainer (schedule)")

    def save(self, path: str) -> None:
        gather([a.save.remote(path) for a in self.actors], "trainer (save)")

    def load(self, path: str) -> None:
        gather([a.load.remote(path) for a in self.actors], "trainer (load)")

    def dead_ranks(self, timeout_s: float = 10.0) -> List[int]:
        """The ranks whose actor died (a probe gets ``RayActorError``); a rank still busy in a call,
        e.g. waiting in a collective for a dead peer, counts as alive."""
        import ray

        probes = [a.__ray_ready__.remote() for a in self.actors]
        pending, dead, deadline = list(probes), [], time.monotonic() + timeout_s
        while pending and not dead and time.monotonic() < deadline:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                try:
                    ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    dead.append(probes.index(ref))
        return sorted(dead)

    def shutdown(self) -> None:
        """Kill every rank (no restart) and free the placement group: a lost rank takes the group with it."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)


# --------------------------------------------------------------------------- scheduler
class SchedulerClient:
    """The Scheduler actor (the one clock): pushes each step's values to the trainers."""

    def __init__(self, actor: Any):
        self.actor = actor

    @classmethod
    def create(cls, actor_cls: type, cfg: RLConfig, trainers: TrainerGroup) -> "SchedulerClient":
        """On the driver's node (0 CPUs, fits even a CPU-less head): losing a pool's node never takes the clock."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(actor_cls).options(name=f"scheduler:{cfg.name}", num_cpus=0, scheduling_strategy=here)
        return cls(remote.remote(cfg.schedule, trainers.actors))

    def shutdown(self) -> None:
        """Kill the actor and wait until Ray has it dead (its name is free again)."""
        import ray

        ray.kill(self.actor, no_restart=True)
        try:
            ray.get(self.actor.__ray_ready__.remote(), timeout=30)
        except ray.exceptions.RayError:  # dead, as wanted
            pass

    def broadcast(self) -> Dict[str, float]:
        return get(self.actor.broadcast.remote(), "scheduler")

    def advance(self) -> int:
        return get(self.actor.advance.remote(), "scheduler")

    def state_dict(self) -> Dict[str, int]:
        return get(self.actor.state_dict.remote(), "scheduler")

    def load_state_dict(self, state: Dict[str, int]) -> None:
        get(self.actor.load_state_dict.remote(state), "scheduler")
