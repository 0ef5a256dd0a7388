"""Where actors go: each pool's Ray options from its config section, restarts, and Ray itself.

Design: every pool is placed from its own section (``num_workers``, ``num_cpus``, ``num_gpus``,
``resources``, ``label_selector``), so pools scale independently and land on the nodes their
label names; rollout and reward actors are restarted by Ray (``ACTOR_RESTARTS``).
"""

from __future__ import annotations

import os
from typing import Any, Dict

from rlvr.config import PoolConfig, RLConfig

ACTOR_RESTARTS = 3  # how often Ray brings back a dead rollout or reward actor


def actor_options(pool: PoolConfig) -> Dict[str, Any]:
    """Ray scheduling options of one actor of ``pool``."""
    opts: Dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
    if pool.resources:
        opts["resources"] = dict(pool.resources)
    if pool.label_selector:
        opts["label_selector"] = dict(pool.label_selector)
    return opts


def restartable(cls: type, pool: PoolConfig):
    import ray

    return ray.remote(cls).options(**actor_options(pool), max_restarts=ACTOR_RESTARTS, max_task_retries=0)


def start_ray(cfg: RLConfig) -> None:
    """Join ``cluster.address`` (or ``RAY_ADDRESS``), else start a local Ray with the dashboard off."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:  # a submitted job: its runtime_env (and any --env the user gave) already applies
        ray.init(address=address, namespace=cfg.cluster.namespace)
    else:
        runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}}
        # address="local": always a new instance, never a `ray start` cluster that happens to run here
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, namespace=cfg.cluster.namespace,
                 runtime_env=runtime_env, dashboard_host=cfg.cluster.dashboard_host, include_dashboard=False)
