"""DAPO soft overlong punishment (arXiv 2503.14476, Eq. 13): hand-computed edges and a slow loop."""

from pathlib import Path

import pytest
import torch

from helpers import dapo_eq13
from rlvr.algo.overlong import overlong_penalty
from rlvr.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_hand_computed_edges():
    # max_len 20, cache 4: the ramp covers lengths 17..20 in steps of -penalty/4.
    lengths = torch.tensor([0, 15, 16, 17, 18, 19, 20, 21, 100])
    got = overlong_penalty(lengths, max_len=20, cache=4, penalty=1.0)
    want = torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    torch.testing.assert_close(got, want)
    assert got.dtype == torch.float32 and got.shape == (9,)


def test_penalty_scales_the_whole_curve():
    lengths = torch.tensor([16, 18, 20, 30])
    got = overlong_penalty(lengths, max_len=20, cache=4, penalty=0.5)
    torch.testing.assert_close(got, torch.tensor([0.0, -0.25, -0.5, -0.5]))


def test_dapo_paper_values():
    # DAPO: L_max = 20480, L_cache = 4096; 16384 tokens are free, 18432 is half-way down the ramp.
    got = overlong_penalty(torch.tensor([16384, 18432, 20480, 20481]), 20480, 4096, 1.0)
    torch.testing.assert_close(got, torch.tensor([0.0, -0.5, -1.0, -1.0]))


def test_matches_slow_loop_on_random_lengths():
    gen = torch.Generator().manual_seed(0)
    for max_len, cache, penalty in [(64, 16, 1.0), (64, 64, 0.3), (50, 7, 2.0), (10, 1, 1.0)]:
        lengths = torch.randint(0, 2 * max_len, (500,), generator=gen)
        got = overlong_penalty(lengths, max_len, cache, penalty)
        want = torch.tensor([dapo_eq13(float(n), max_len, cache, penalty) for n in lengths])
        torch.testing.assert_close(got, want)


def test_float_lengths_and_monotone():
    lengths = torch.linspace(0, 40, 401)
    got = overlong_penalty(lengths, max_len=30, cache=10, penalty=1.0)
    assert torch.all(got[1:] <= got[:-1])  # never rewards being longer
    assert got.max() == 0.0 and got.min() == -1.0
    torch.testing.assert_close(got[250], torch.tensor(-0.5))  # length 25.0: half-way down


def test_zero_cache_is_a_hard_cut():
    got = overlong_penalty(torch.tensor([9, 10, 11]), max_len=10, cache=0, penalty=1.0)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -1.0]))
    assert torch.isfinite(got).all()


def test_bad_arguments_fail():
    with pytest.raises(ValueError, match="cache <= max_len"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache=5, penalty=1.0)
    with pytest.raises(ValueError, match="penalty >= 0"):
        overlong_penalty(torch.tensor([1]), max_len=4, cache=2, penalty=-1.0)


def test_config_section_defaults_off_and_validates():
    cfg = load_config([])
    assert cfg.algorithm.overlong.max_len == 0 and not cfg.algorithm.overlong.enabled
    cfg = load_config([], ["algorithm.overlong.max_len=2048", "algorithm.overlong.cache=410"])
    assert cfg.algorithm.overlong.enabled and cfg.algorithm.overlong.penalty == 1.0
    for bad in (["algorithm.overlong.max_len=100", "algorithm.overlong.cache=101"],
                ["algorithm.overlong.max_len=-1"],
                ["algorithm.overlong.max_len=100", "algorithm.overlong.penalty=-0.5"]):
        with pytest.raises(ConfigError, match="algorithm.overlong"):
            load_config([], bad)


def test_dapo_config_turns_it_on():
    cfg = load_config([str(ROOT / "configs/cluster_8xh100.yaml"), str(ROOT / "configs/dapo.yaml")])
    ol = cfg.algorithm.overlong
    assert (ol.max_len, ol.cache, ol.penalty) == (2048, 410, 1.0)
    assert ol.max_len == cfg.rollout.max_tokens  # scaled to the budget it was written for
