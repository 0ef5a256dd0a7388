"""The trainer engines: ``trainer.engine`` -> a class with the :class:`rlvr.train.trainer.Trainer` interface.

Design: a second trainer implementation is plausible (DeepSpeed beside FSDP2), so it plugs in here.  Every engine is built as
``Engine(model_path, cfg, mesh=..., device=..., temperature=..., reference=...)`` and offers
``compute_stats``, ``train_step``, ``full_state_dict``, ``save`` and ``load``, so the RL step, the
checkpoints and the weight transport do not know which one runs.  ``fsdp2`` is the default
(:mod:`rlvr.train.trainer`); ``deepspeed`` is ZeRO-1/2/3 (:mod:`rlvr.train.deepspeed_trainer`, which
imports DeepSpeed only when an engine is built).  The names mirror ``rlvr.config.TRAINER_ENGINES``.
"""

from __future__ import annotations

from rlvr.registry import Registry
from rlvr.train.deepspeed_trainer import DeepSpeedTrainer
from rlvr.train.trainer import Trainer

TRAINER_ENGINES: Registry[type] = Registry("trainer.engine",
                                          {"fsdp2": Trainer, "deepspeed": DeepSpeedTrainer})
