"""Scheduler: the single named actor that owns the global step and drives TP-Schedule.

Each iteration it evaluates the percentile, decay, entropy-advantage-scale and
sample-keep schedules at the current step and *pushes* them to every trainer before the
train call (the broadcast the paper's temporal schedule needs); its state is
part of every checkpoint.

Contract (called by :class:`rlvr.loop.trainer_group.SchedulerClient` from the RL step):

* ``__init__(cfg: ScheduleSection, trainers)``: the trainer rank handles it pushes to.
* ``values(step) -> {step, percentile, decay, entropy_adv_scale, sample_keep}``: the schedules at ``step``
  (``sample_keep``: the share of samples D^3S keeps, :mod:`rlvr.algo.d3s`).
* ``broadcast() -> values``: pushes the current step's values to every trainer
  (``set_schedule``), blocking until all have them, and returns them.
* ``advance() -> step``: marks the current step done.
* ``state_dict()`` / ``load_state_dict(state)``: the global step, for checkpoints.
"""

from __future__ import annotations

from typing import Dict, List

from rlvr.algo.schedules import schedule_value
from rlvr.config import ScheduleSection


class Scheduler:
    def __init__(self, cfg: ScheduleSection, trainers: List = ()):
        self.cfg = cfg
        self.trainers = list(trainers)
        self.step = 0

    def values(self, step: int) -> Dict[str, float]:
        T = self.cfg.total_steps
        return {
            "step": step,
            "percentile": schedule_value(self.cfg.percentile, step, T),
            "decay": schedule_value(self.cfg.decay, step, T),
            "entropy_adv_scale": schedule_value(self.cfg.entropy_adv_scale, step, T),
            "sample_keep": schedule_value(self.cfg.sample_keep, step, T),
        }

    def broadcast(self) -> Dict[str, float]:
        """Push this step's values to every trainer (blocking until all have them) and return them."""
        import ray

        values = self.values(self.step)
        ray.get([t.set_schedule.remote(values) for t in self.trainers])
        return values

    def advance(self) -> int:
        """Mark the current step done; returns the new global step."""
        self.step += 1
        return self.step

    def state_dict(self) -> Dict[str, int]:
        return {"step": self.step, "total_steps": self.cfg.total_steps}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.step = int(state["step"])
