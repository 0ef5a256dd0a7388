"""Token credit: the vectorised selection against a per-trajectory Python loop, and closed cases."""

import math
import zlib

import pytest
import torch

from rlvr.algo.credit import (
    CREDIT_CRITERIA,
    CreditInputs,
    compute_token_weight,
    kth_largest_threshold,
    token_credit,
)

SCOPES = ("trajectory", "group", "batch")
G = 3


def ragged_inputs(seed, n=12, t=17, tie_levels=None):
    """Random padded batch with lengths including 0 and 1; optional coarse scores to force ties."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[0], lengths[1], lengths[2] = 1, 0, t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    entropy = torch.rand(n, t, generator=g) * 2
    logprob = -torch.rand(n, t, generator=g) * 4
    if tie_levels:
        entropy = torch.floor(entropy * tie_levels / 2) / tie_levels
        logprob = torch.floor(logprob * tie_levels / 4) / tie_levels
    adv = torch.randn(n, 1, generator=g).expand(n, t).clone()
    adv[3] = 0.0  # a zero-advantage row: |A| H ties at 0
    return CreditInputs(mask, entropy=entropy, logprob=logprob, advantages=adv)


def reference_score(criterion, inp, i, j):
    if criterion == "none":
        return math.inf
    if criterion == "position":
        length = int(inp.token_mask[i].sum())
        return int(inp.token_mask[i, : j + 1].sum() - 1) / length
    if criterion == "entropy":
        return inp.entropy[i, j].item()
    if criterion == "surprisal":
        return -inp.logprob[i, j].item()
    return abs(inp.advantages[i, j].item()) * inp.entropy[i, j].item()


def reference_targeted(criterion, inp, percentile, scope, group_size):
    """Slow loop: for each unit, sort its valid scores, take the k-th largest, compare."""
    n, t = inp.token_mask.shape
    per_unit = {"trajectory": 1, "group": group_size, "batch": n}[scope]
    targeted = torch.zeros(n, t, dtype=torch.bool)
    for start in range(0, n, per_unit):
        cells = [(i, j) for i in range(start, start + per_unit) for j in range(t) if inp.token_mask[i, j]]
        scores = [reference_score(criterion, inp, i, j) for i, j in cells]
        k = max(0, math.ceil(len(cells) * (1 - percentile) - 1e-6))
        if k == 0:
            threshold = math.inf
        else:
            threshold = sorted(scores, reverse=True)[k - 1]
        for (i, j), s in zip(cells, scores):
            targeted[i, j] = s >= threshold
    return targeted


@pytest.mark.parametrize("criterion", sorted(CREDIT_CRITERIA))
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("percentile", [0.0, 0.3, 0.5, 0.8, 0.99, 1.0])
@pytest.mark.parametrize("ties", [None, 3])
def test_vectorised_equals_reference_loop(criterion, scope, percentile, ties):
    inp = ragged_inputs(seed=zlib.crc32(f"{criterion}{scope}{percentile}".encode()), tie_levels=ties)
    weight, targeted, m = compute_token_weight(criterion, inp, percentile, 0.1, scope, G)
    expected = reference_targeted(criterion, inp, percentile, scope, G)
    assert torch.equal(targeted, expected)
    mask = inp.token_mask
    torch.testing.assert_close(weight, torch.where(expected, 1.0, 0.1) * mask)
    assert m["targeted_frac"] == pytest.approx(expected.sum().item() / mask.sum().item())
    assert m["token_weight_mean"] == pytest.approx(weight.sum().item() / mask.sum().item())


def test_position_half_targets_last_five_of_ten():
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :10] = True
    mask[1, 2:12] = True  # left-padded layout: the index counts valid tokens only
    weight, targeted, m = compute_token_weight("position", CreditInputs(mask), 0.5, 0.0)
    assert targeted[0].tolist() == [False] * 5 + [True] * 5 + [False] * 2
    assert targeted[1].tolist() == [False] * 7 + [True] * 5
    assert torch.equal(weight, targeted.float())
    assert m["targeted_frac"] == 0.5


@pytest.mark.parametrize("length", [1, 2, 7, 99, 100, 101, 1000])
def test_paper_start_099_targets_the_last_token(length):
    mask = torch.ones(1, length, dtype=torch.bool)
    _, targeted, _ = compute_token_weight("position", CreditInputs(mask), 0.99, 0.0)
    k = math.ceil(length * 0.01 - 1e-6)  # 1 token up to length 100, then 2 ...
    assert targeted[0, -k:].all() and not targeted[0, :-k].any()
    assert targeted[0, -1]


def test_percentile_extremes():
    inp = ragged_inputs(0)
    _, none_targeted, m1 = compute_token_weight("entropy", inp, 1.0, 0.0)
    _, all_targeted, m0 = compute_token_weight("entropy", inp, 0.0, 0.0)
    assert not none_targeted.any() and m1["targeted_frac"] == 0.0
    assert torch.equal(all_targeted, inp.token_mask) and m0["targeted_frac"] == 1.0


@pytest.mark.parametrize("percentile", [0.0, 0.5, 0.99, 1.0])
def test_none_targets_every_valid_token(percentile):
    inp = ragged_inputs(1)
    weight, targeted, _ = compute_token_weight("none", inp, percentile, 0.0, "group", G)
    assert torch.equal(targeted, inp.token_mask)
    assert torch.equal(weight, inp.token_mask.float())


def test_decay_zero_and_one():
    inp = ragged_inputs(2)
    w0, targeted, _ = compute_token_weight("surprisal", inp, 0.7, 0.0)
    w1, targeted1, m1 = compute_token_weight("surprisal", inp, 0.7, 1.0)
    assert torch.equal(targeted, targeted1)
    assert torch.equal(w0, targeted.float())  # decay 0: only targeted tokens carry gradient
    assert torch.equal(w1, inp.token_mask.float())  # decay 1: vanilla GRPO weights
    assert m1["token_weight_mean"] == 1.0
    w_half, _, _ = compute_token_weight("surprisal", inp, 0.7, 0.5)
    torch.testing.assert_close(w_half, (0.5 + 0.5 * targeted.float()) * inp.token_mask)


def test_padding_never_targeted_even_with_high_scores():
    inp = ragged_inputs(3)
    score = torch.where(inp.token_mask, torch.rand(inp.token_mask.shape), 1e9)  # padding scores highest
    for scope in SCOPES:
        weight, targeted, _ = token_credit(score, inp.token_mask, 0.9, 0.5, scope, G)
        assert not (targeted & ~inp.token_mask).any()
        assert (weight[~inp.token_mask] == 0).all()


def test_all_padding_rows_and_empty_batch():
    mask = torch.zeros(3, 5, dtype=torch.bool)
    weight, targeted, m = token_credit(torch.randn(3, 5), mask, 0.5, 0.3)
    assert not targeted.any() and (weight == 0).all()
    assert m["targeted_frac"] == 0.0


def test_ties_at_threshold_are_all_targeted():
    score = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    _, targeted, _ = token_credit(score, mask, 0.8, 0.0)  # k = 1: the largest is tied three times
    assert targeted.tolist() == [[False, True, True, True, False]]


def test_group_scope_pools_trajectories():
    # group of two: row 0 scores all above row 1; a group percentile of 0.5 targets row 0 only
    score = torch.tensor([[5.0, 6.0, 7.0], [1.0, 2.0, 3.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    _, traj, _ = token_credit(score, mask, 0.5, 0.0, "trajectory")
    _, group, _ = token_credit(score, mask, 0.5, 0.0, "group", group_size=2)
    assert traj.tolist() == [[False, True, True], [False, True, True]]
    assert group.tolist() == [[True, True, True], [False, False, False]]
    with pytest.raises(ValueError, match="group_size=3"):
        token_credit(score, mask, 0.5, 0.0, "group", group_size=3)


def test_topk_and_sort_paths_agree():
    g = torch.Generator().manual_seed(4)
    score = torch.randn(40, 64, generator=g)
    mask = torch.rand(40, 64, generator=g) < 0.8
    for percentile in (0.99, 0.9, 0.8, 0.5, 0.0):  # small k uses topk, large k a full sort
        thr = kth_largest_threshold(score, mask, percentile)
        for i in range(40):
            valid = score[i][mask[i]].sort(descending=True).values
            k = math.ceil(len(valid) * (1 - percentile) - 1e-6)
            assert thr[i].item() == (valid[k - 1].item() if k > 0 else math.inf)


def test_errors_name_the_problem():
    inp = CreditInputs(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="none, position, entropy, surprisal, advantage_entropy"):
        compute_token_weight("random", inp, 0.5, 0.0)
    with pytest.raises(ValueError, match="needs CreditInputs.entropy"):
        compute_token_weight("entropy", inp, 0.5, 0.0)
    with pytest.raises(ValueError, match="trajectory, group, batch"):
        compute_token_weight("position", inp, 0.5, 0.0, scope="prompt")
    with pytest.raises(ValueError, match="percentile"):
        compute_token_weight("position", inp, 1.5, 0.0)
