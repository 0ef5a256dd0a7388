"""Ray actors: thin shells over ``rlvr/``, one class per role.

``ACTORS`` is what a run is built from (``rlvr.loop.run.build_run``): the library never
imports this package; the entry points (``launch/``) hand these classes in.
"""

from rlvr.loop.groups import ActorClasses
from workers.reward_pool import RewardPool
from workers.rollout import RolloutWorker
from workers.scheduler import Scheduler
from workers.trainer import TrainerWorker

ACTORS = ActorClasses(rollout=RolloutWorker, reward=RewardPool, trainer=TrainerWorker, scheduler=Scheduler)

__all__ = ["ACTORS", "RewardPool", "RolloutWorker", "Scheduler", "TrainerWorker"]
