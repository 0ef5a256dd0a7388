"""Scalar schedules over training: the *when* of TP-Schedule.

TP-Schedule ("Not only where, But when: Temporal Scheduling for RLVR",
arXiv 2605.25381) moves the token-credit percentile over training: at the
start only the last 1% of each response is trained (percentile 0.99), and the
threshold falls linearly to 0 (every token trained) over the first 80% of the
steps.  Every scheduled scalar in this system (percentile, decay, entropy
advantage scale) is one :class:`~rlvr.config.ScheduleConfig` evaluated here.

Design: a schedule is ``magnitude + (end - magnitude) * f(progress)``, where
``progress`` in [0, 1] is the position of the step inside the window
``[start_ratio*T, end_ratio*T]`` and ``f`` is a *ramp* from 0 to 1 chosen by
name from :data:`SCHEDULES`.  Ramps know nothing of values or windows, so a
new curve is one small function with one signature.

This module is pure Python and imports no torch: the Scheduler actor (and the
config validator) evaluate schedules without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rlvr.config import ScheduleConfig

RampFn = Callable[[float, ScheduleConfig], float]


def constant_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = 0: the value stays at ``magnitude`` for the whole run."""
    return 0.0


def linear_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = p (the paper's default)."""
    return p


def gamma_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = p ** gamma: gamma > 1 lingers near ``magnitude``, gamma < 1 leaves it fast."""
    return p ** cfg.gamma


def cosine_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = (1 - cos(pi p)) / 2: flat at both ends of the window."""
    return (1.0 - math.cos(math.pi * p)) / 2.0


def sigmoid_ramp(p: float, cfg: ScheduleConfig) -> float:
    """Logistic of slope ``sharpness`` centred at 0.5, rescaled so f(0) = 0 and f(1) = 1."""

    def logistic(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-cfg.sharpness * (x - 0.5)))

    lo, hi = logistic(0.0), logistic(1.0)
    if hi - lo <= 0.0:  # sharpness == 0 degenerates to a flat logistic; fall back to linear
        return p
    return (logistic(p) - lo) / (hi - lo)


def step_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = floor(p * num_steps) / num_steps: ``num_steps`` equal plateaus, f(1) = 1."""
    n = max(int(cfg.num_steps), 1)
    return math.floor(p * n) / n


SCHEDULES: dict[str, RampFn] = {
    "constant": constant_ramp,
    "linear": linear_ramp,
    "gamma": gamma_ramp,
    "cosine": cosine_ramp,
    "sigmoid": sigmoid_ramp,
    "step": step_ramp,
}


def progress(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """Position of ``step`` in the window, clip((step - s*T) / ((e - s)*T), 0, 1)."""
    start = cfg.start_ratio * total_steps
    width = (cfg.end_ratio - cfg.start_ratio) * total_steps
    if width <= 0.0:  # zero-width window: a jump from magnitude to end at the window
        return 1.0 if step >= start else 0.0
    return min(max((step - start) / width, 0.0), 1.0)


def get_ramp(kind: str) -> RampFn:
    """The ramp registered as ``kind``; an unknown name fails listing the valid ones."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind '{kind}'; valid kinds: {', '.join(SCHEDULES)}")
    return SCHEDULES[kind]


def schedule_value(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """The scheduled scalar at ``step`` of ``total_steps``: magnitude + (end - magnitude) * f."""
    f = get_ramp(cfg.kind)(progress(cfg, step, total_steps), cfg)
    return cfg.magnitude + (cfg.end - cfg.magnitude) * f
