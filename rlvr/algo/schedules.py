"""Scalar schedules over training: the *when* of TP-Schedule.

TP-Schedule ("Not only where, But when: Temporal Scheduling for RLVR",
arXiv 2605.25381) moves the token-credit percentile over training: at the
start only the last 1% of each response is trained (percentile 0.99), and the
threshold falls linearly to 0 (every token trained) over the first 80% of the
steps.  Every scheduled scalar in this system (percentile, decay, entropy
advantage scale) is one :class:`~rlvr.config.ScheduleConfig` evaluated here.

Design: a schedule is ``magnitude + (end - magnitude) * f(progress)``, where
``progress`` in [0, 1] is the position of the step inside the window
``[start_ratio*T, end_ratio*T]`` and ``f`` is a *ramp* chosen by name from
:data:`SCHEDULES`.  Ramps know nothing of windows, so a new curve is one small
function with one signature.

Formulas of the authors' code (``RayPPOTrainer._prefix_curriculum`` in
``verl/trainer/ppo/ray_trainer.py`` of github.com/Jinghaoleven/RLVR-Schedule;
their schedules always fall to 0, so there ``end = 0``):

- ``linear``   m * (1 - p)                                   (``linear_ratio``)
- ``sigmoid``  m * (s(p) - s(1)) / (s(0) - s(1)),
               s(x) = 1 / (1 + exp(k (x - 0.5))), k = 8      (``sigmoid_ratio``)
- ``gamma``    (m * (1 - p)) ** gamma, gamma = 2              (``gamma_ratio``)

``linear`` and ``sigmoid`` are ramps from 0 to 1 as above (the rescaled
logistic of slope ``sharpness`` is 1 - s).  ``gamma`` raises the *value*, not
the progress, to the power, so its value at progress 0 is ``magnitude **
gamma`` (0.9801 for 0.99), not ``magnitude``; for a general ``end`` it is
``end + sign(m - end) * (|m - end| * (1 - p)) ** gamma``, which is the
authors' curve at ``end = 0`` and still meets ``end`` at progress 1.
``constant``, ``cosine`` and ``step`` are ours.

Step counter (kept deliberately): our ``step`` is 0-based and the window is
``[start_ratio*T, end_ratio*T]`` in real numbers, so the first update trains
at exactly ``magnitude``.  The authors' ``global_steps`` starts at 1 for the
first update and their window ends are truncated, ``int(ratio * T)``; their
update number i (1-based) uses progress ``i / int(0.8 T)`` where ours uses
``(i - 1) / (0.8 T)``: their curve runs one step ahead of ours (plus under one
step of truncation when ``0.8 T`` is not an integer).  At gamma = 2, m = 0.99,
T = 100 our steps 0/20/40/60 give 0.980/0.551/0.245/0.061, theirs (global
steps 1/21/41/61) 0.956/0.533/0.233/0.055.

This module is pure Python and imports no torch: the Scheduler actor (and the
config validator) evaluate schedules without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rlvr.config import ScheduleConfig
from rlvr.registry import Registry

RampFn = Callable[[float, ScheduleConfig], float]


def constant_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = 0: the value stays at ``magnitude`` for the whole run."""
    return 0.0


def linear_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = p (the paper's default)."""
    return p


def gamma_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f with magnitude + (end - m) f = end + sign(m - end) (|m - end| (1 - p)) ** gamma.

    The authors' ``gamma_ratio`` (m (1 - p)) ** gamma at end = 0: convex, it leaves
    ``magnitude`` fast for gamma > 1.  f(0) = 1 - |m - end| ** (gamma - 1), not 0.
    """
    span = abs(cfg.magnitude - cfg.end)
    if span == 0.0:  # magnitude == end: the value is constant whatever f is
        return 0.0
    return 1.0 - span ** (cfg.gamma - 1.0) * (1.0 - p) ** cfg.gamma


def cosine_ramp(p: float, cfg: ScheduleConfig) -> float:
    """f = (1 - cos(pi p)) / 2: flat at both ends of the window."""
    return (1.0 - math.cos(math.pi * p)) / 2.0


def sigmoid_ramp(p: float, cfg: ScheduleConfig) -> float:
    """Logistic of slope ``sharpness`` (authors: 8) centred at 0.5, rescaled so f(0) = 0 and f(1) = 1."""

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


SCHEDULES: Registry[RampFn] = Registry("schedule kind", {
    "constant": constant_ramp,
    "linear": linear_ramp,
    "gamma": gamma_ramp,
    "cosine": cosine_ramp,
    "sigmoid": sigmoid_ramp,
    "step": step_ramp,
})


def progress(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """Position of ``step`` in the window, clip((step - s*T) / ((e - s)*T), 0, 1)."""
    start = cfg.start_ratio * total_steps
    width = (cfg.end_ratio - cfg.start_ratio) * total_steps
    if width <= 0.0:  # zero-width window: a jump from magnitude to end at the window
        return 1.0 if step >= start else 0.0
    return min(max((step - start) / width, 0.0), 1.0)



def schedule_value(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """The scheduled scalar at ``step`` (0-based) of ``total_steps``: magnitude + (end - magnitude) * f."""
    f = SCHEDULES.get(cfg.kind)(progress(cfg, step, total_steps), cfg)
    return cfg.magnitude + (cfg.end - cfg.magnitude) * f
