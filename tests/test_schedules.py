"""Schedules against their closed forms, and the paper's default percentile schedule."""

import itertools
import math
import subprocess
import sys

import pytest

from rlvr.algo.schedules import SCHEDULES, progress, schedule_value
from rlvr.config import ScheduleConfig

T = 100


def cfg(kind, **kw):
    base = {"kind": kind, "magnitude": 0.9, "end": 0.1, "start_ratio": 0.2, "end_ratio": 0.6}
    base.update(kw)
    return ScheduleConfig(**base)


def logistic(x, k):
    return 1.0 / (1.0 + math.exp(-k * (x - 0.5)))


CLOSED_FORMS = {
    "constant": lambda p, c: 0.0,
    "linear": lambda p, c: p,
    # authors' (m (1 - p)) ** gamma relative to end: m + (end - m) f = end + (|m - end| (1 - p)) ** gamma
    "gamma": lambda p, c: 1 - abs(c.magnitude - c.end) ** (c.gamma - 1) * (1 - p) ** c.gamma,
    "cosine": lambda p, c: (1 - math.cos(math.pi * p)) / 2,
    "sigmoid": lambda p, c: (logistic(p, c.sharpness) - logistic(0, c.sharpness))
    / (logistic(1, c.sharpness) - logistic(0, c.sharpness)),
    "step": lambda p, c: math.floor(p * c.num_steps) / c.num_steps,
}


@pytest.mark.parametrize("kind", sorted(CLOSED_FORMS))
@pytest.mark.parametrize(
    "step, p",
    [(0, 0.0), (20, 0.0), (30, 0.25), (40, 0.5), (50, 0.75), (59, 0.975), (60, 1.0), (100, 1.0)],
)
def test_each_kind_matches_closed_form(kind, step, p):
    c = cfg(kind, gamma=3.0, sharpness=7.0, num_steps=4)
    assert progress(c, step, T) == pytest.approx(p, abs=1e-12)
    expected = 0.9 + (0.1 - 0.9) * CLOSED_FORMS[kind](p, c)
    assert schedule_value(c, step, T) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind", sorted(CLOSED_FORMS))
def test_window_edges_hit_magnitude_and_end(kind):
    c = cfg(kind)
    # start edge: f(0) = 0, but gamma starts at end + (magnitude - end) ** gamma (the authors' curve)
    expected_start = 0.1 + 0.8 ** 2 if kind == "gamma" else 0.9
    assert schedule_value(c, 20, T) == pytest.approx(expected_start, abs=1e-12)
    expected_end = 0.9 if kind == "constant" else 0.1
    assert schedule_value(c, 60, T) == pytest.approx(expected_end, abs=1e-12)  # end edge: f(1) = 1


def test_hand_computed_middles():
    # linear at p=0.5 is halfway; cosine too by symmetry; gamma=2 at p=0.5: 0.1 + (0.8 * 0.5) ** 2
    assert schedule_value(cfg("linear"), 40, T) == pytest.approx(0.5)
    assert schedule_value(cfg("cosine"), 40, T) == pytest.approx(0.5)
    assert schedule_value(cfg("gamma", gamma=2.0), 40, T) == pytest.approx(0.26)
    assert schedule_value(cfg("sigmoid"), 40, T) == pytest.approx(0.5)
    # step with 4 plateaus: p=0.3 -> floor(1.2)/4 = 0.25
    assert schedule_value(cfg("step", num_steps=4), 32, T) == pytest.approx(0.9 - 0.8 * 0.25)


def test_paper_default_linear_099_to_0_over_80_percent():
    c = ScheduleConfig(kind="linear", magnitude=0.99, end=0.0, start_ratio=0.0, end_ratio=0.8)
    total = 500
    for step, expected in [(0, 0.99), (100, 0.99 * 0.75), (200, 0.99 * 0.5), (300, 0.99 * 0.25),
                           (399, 0.99 * (1 - 399 / 400)), (400, 0.0), (450, 0.0), (500, 0.0)]:
        assert schedule_value(c, step, total) == pytest.approx(expected, abs=1e-12), step


# The authors' _prefix_curriculum (verl/trainer/ppo/ray_trainer.py, RLVR-Schedule) with
# initial_schedule_magnitude m = 0.99, window 0 .. 0.8 of T = 100 (p = step / 80), end 0, evaluated
# by hand at our steps 0/20/40/60/80/100 (p = 0, 0.25, 0.5, 0.75, 1, 1); s(x) = 1 / (1 + exp(8 (x - 0.5))).
AUTHORS_VALUES = {
    # linear_ratio: m (1 - p)
    "linear": [0.99, 0.7425, 0.495, 0.2475, 0.0, 0.0],
    # gamma_ratio, gamma = 2: (m (1 - p)) ** 2 = 0.9801, 0.7425**2, 0.495**2, 0.2475**2
    "gamma": [0.9801, 0.55130625, 0.245025, 0.06125625, 0.0, 0.0],
    # sigmoid_ratio, k = 8: m (s(p) - s(1)) / (s(0) - s(1)); at p = 0.25:
    # s = 1/(1+e^-2) = 0.8807971, s(1) = 1/(1+e^4) = 0.0179862, s(0) = 0.9820138 -> 0.99 * 0.8950124
    "sigmoid": [0.99, 0.8860563504505283, 0.495, 0.10394364954947144, 0.0, 0.0],
    # ours, no authors' counterpart: cosine m (1 + cos(pi p)) / 2; step (4 plateaus) m (1 - floor(4 p) / 4)
    "cosine": [0.99, 0.845017856687341, 0.495, 0.14498214331265902, 0.0, 0.0],
    "step": [0.99, 0.7425, 0.495, 0.2475, 0.0, 0.0],
    "constant": [0.99] * 6,
}


@pytest.mark.parametrize("kind", sorted(AUTHORS_VALUES))
def test_pinned_values_of_the_authors_formulas(kind):
    c = ScheduleConfig(kind=kind, magnitude=0.99, end=0.0, start_ratio=0.0, end_ratio=0.8)
    assert c.gamma == 2.0 and c.sharpness == 8.0  # the authors' defaults (gamma_ratio 2.0, k = 8.0)
    got = [schedule_value(c, step, T) for step in (0, 20, 40, 60, 80, 100)]
    assert got == pytest.approx(AUTHORS_VALUES[kind], abs=1e-12)


def test_gamma_is_convex_below_linear():
    # the old ramp m + (end - m) p ** gamma gave 0.990/0.928/0.743/0.433 at steps 0/20/40/60: concave
    c = ScheduleConfig(kind="gamma", magnitude=0.99, end=0.0, end_ratio=0.8)
    lin = ScheduleConfig(kind="linear", magnitude=0.99, end=0.0, end_ratio=0.8)
    for step in range(1, 80):
        assert schedule_value(c, step, T) < schedule_value(lin, step, T)
    # the authors' global step is ours + 1: their (0.99 * (1 - 21/80)) ** 2 is our step 21
    assert schedule_value(c, 21, T) == pytest.approx(0.5330825156250001, abs=1e-12)


def test_zero_width_window_is_a_jump():
    c = cfg("linear", start_ratio=0.5, end_ratio=0.5)
    assert progress(c, 49, T) == 0.0
    assert progress(c, 50, T) == 1.0
    assert schedule_value(c, 49, T) == pytest.approx(0.9)
    assert schedule_value(c, 50, T) == pytest.approx(0.1)


def test_increasing_schedule_and_monotonicity():
    for kind in ("linear", "gamma", "cosine", "sigmoid", "step"):
        c = cfg(kind, magnitude=0.0, end=1.0, start_ratio=0.0, end_ratio=1.0)
        values = [schedule_value(c, s, T) for s in range(T + 1)]
        assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values)), kind
        assert values[0] == pytest.approx(0.0) and values[-1] == pytest.approx(1.0)


def test_unknown_kind_lists_valid_names():
    c = ScheduleConfig()
    c.kind = "exponential"
    with pytest.raises(ValueError, match="linear.*cosine|valid kinds: constant, linear"):
        schedule_value(c, 0, T)
    assert set(SCHEDULES) == {"constant", "linear", "gamma", "cosine", "sigmoid", "step"}


def test_imports_without_torch():
    code = "import sys; import rlvr.algo.schedules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
