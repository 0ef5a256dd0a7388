"""Starting Ray and the actor pools from config.

Design: each pool (rollout, verifier, trainer) is placed from its own config
section (``num_workers``, ``num_cpus``, ``num_gpus``, custom ``resources``,
``label_selector``), so pools scale independently; trainers share a placement
group so their ranks are gang-scheduled.  Rollout and reward actors restart
on failure (the driver re-sends the latest weights to a restarted engine).
The Ray dashboard binds to loopback unless ``cluster.dashboard_host`` says
otherwise; Ray's token authentication is left as Ray configures it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from rlvr.config import PoolConfig, RLConfig

ACTOR_RESTARTS = 3  # how often a dead rollout or reward actor is brought back


def start_ray(cfg: RLConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:  # a submitted job: its runtime_env (and any --env the user gave) already applies
        ray.init(address=address, namespace=cfg.cluster.namespace)
    else:
        runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}}
        ray.init(num_cpus=cfg.cluster.num_cpus, namespace=cfg.cluster.namespace, runtime_env=runtime_env,
                 dashboard_host=cfg.cluster.dashboard_host, include_dashboard=False)


def actor_options(pool: PoolConfig) -> Dict[str, Any]:
    """Ray scheduling options of one actor of ``pool``."""
    opts: Dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
    if pool.resources:
        opts["resources"] = dict(pool.resources)
    if pool.label_selector:
        opts["label_selector"] = dict(pool.label_selector)
    return opts


@dataclass
class Actors:
    rollouts: List[Any]
    reward: Any
    trainers: List[Any]
    scheduler: Any
    placement_groups: List[Any] = field(default_factory=list)


def create_serving_actors(cfg: RLConfig, model_path: str, run_dir: str) -> Tuple[List[Any], Any]:
    """The rollout workers serving ``model_path`` and the reward pool: all that ``rlvr eval`` needs."""
    import ray

    from workers.reward_pool import RewardPool
    from workers.rollout import RolloutWorker

    restart = {"max_restarts": ACTOR_RESTARTS, "max_task_retries": 0}
    rollouts = [
        ray.remote(RolloutWorker).options(**actor_options(cfg.rollout), **restart).remote(model_path, cfg.rollout, i, run_dir)
        for i in range(cfg.rollout.num_workers)
    ]
    reward = ray.remote(RewardPool).options(**actor_options(cfg.verifier), **restart).remote(cfg.verifier)
    return rollouts, reward


def create_actors(cfg: RLConfig, model_path: str, run_dir: str) -> Actors:
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from workers.scheduler import Scheduler
    from workers.trainer import TrainerWorker

    rollouts, reward = create_serving_actors(cfg, model_path, run_dir)

    bundle = {"CPU": cfg.trainer.num_cpus, "GPU": cfg.trainer.num_gpus, **cfg.trainer.resources}
    bundle = {k: v for k, v in bundle.items() if v}
    n = cfg.trainer.num_workers
    labels = [dict(cfg.trainer.label_selector)] * n if cfg.trainer.label_selector else None
    pg = placement_group([bundle] * n, strategy="PACK", bundle_label_selector=labels)
    ray.get(pg.ready())
    trainer_cls = ray.remote(TrainerWorker)
    trainers = [
        trainer_cls.options(
            **actor_options(cfg.trainer),
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
        ).remote(rank, cfg.trainer.num_workers, cfg.trainer, cfg.seed)
        for rank in range(cfg.trainer.num_workers)
    ]
    addr, port = ray.get(trainers[0].address.remote())
    ray.get([t.setup.remote(addr, port, model_path, cfg.rollout.temperature) for t in trainers])
    scheduler = ray.remote(Scheduler).options(name=f"scheduler:{cfg.name}", num_cpus=0).remote(cfg.schedule, trainers)
    return Actors(rollouts, reward, trainers, scheduler, [pg])
