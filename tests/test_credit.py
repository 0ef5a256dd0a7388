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
from rlvr.algo.losses import aggregation_denominator
from rlvr.algo.token_stats import logits_logprob_entropy

SCOPES = ("trajectory", "group", "batch")
G = 3


def ragged_inputs(seed, n=12, t=17, tie_levels=None, zero_rows=False):
    """Random padded batch with lengths including 0 and 1; optional coarse scores to force ties.

    ``zero_rows``: rows 4 and 5 score exactly 0 for every criterion but position and row 6 half
    of its tokens, as fp32 entropy does on confident tokens.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[0], lengths[1], lengths[2] = 1, 0, t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    entropy = torch.rand(n, t, generator=g) * 2
    logprob = -torch.rand(n, t, generator=g) * 4
    if tie_levels:
        entropy = torch.floor(entropy * tie_levels / 2) / tie_levels
        logprob = torch.floor(logprob * tie_levels / 4) / tie_levels
    if zero_rows:
        entropy[4:6], logprob[4:6] = 0.0, 0.0
        entropy[6, ::2], logprob[6, ::2] = 0.0, 0.0
    adv = torch.randn(n, 1, generator=g).expand(n, t).clone()
    adv[3] = 0.0  # a zero-advantage row: never a candidate of advantage_entropy
    adv[7, : t // 2] = 0.0  # and half a row, as per-token advantages may be
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


def reference_candidate(criterion, inp, i, j):
    """Valid, and for advantage_entropy also A != 0."""
    if not inp.token_mask[i, j]:
        return False
    return criterion != "advantage_entropy" or inp.advantages[i, j].item() != 0.0


def reference_targeted(criterion, inp, percentile, scope, group_size):
    """Slow loop: for each unit, sort its candidates by (score, position) descending, take k (+inf always)."""
    n, t = inp.token_mask.shape
    per_unit = {"trajectory": 1, "group": group_size, "batch": n}[scope]
    targeted = torch.zeros(n, t, dtype=torch.bool)
    for start in range(0, n, per_unit):
        cells = [(i, j) for i in range(start, start + per_unit) for j in range(t)
                 if reference_candidate(criterion, inp, i, j)]
        k = max(0, math.ceil(len(cells) * (1 - percentile) - 1e-6))
        # ties go to the later position of the unit (row-major: a later row wins too)
        ranked = sorted(cells, key=lambda c: (reference_score(criterion, inp, *c), c), reverse=True)
        for rank, (i, j) in enumerate(ranked):
            targeted[i, j] = rank < k or reference_score(criterion, inp, i, j) == math.inf
    return targeted


def reference_candidates(criterion, inp):
    n, t = inp.token_mask.shape
    return torch.tensor([[reference_candidate(criterion, inp, i, j) for j in range(t)] for i in range(n)])


@pytest.mark.parametrize("criterion", sorted(CREDIT_CRITERIA))
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("percentile", [0.0, 0.3, 0.5, 0.8, 0.99, 1.0])
@pytest.mark.parametrize("ties", [None, 3, "zeros"])
def test_vectorised_equals_reference_loop(criterion, scope, percentile, ties):
    inp = ragged_inputs(seed=zlib.crc32(f"{criterion}{scope}{percentile}".encode()),
                        tie_levels=3 if ties == 3 else None, zero_rows=ties == "zeros")
    weight, targeted, m = compute_token_weight(criterion, inp, percentile, 0.1, scope, G)
    expected = reference_targeted(criterion, inp, percentile, scope, G)
    assert torch.equal(targeted, expected)
    cand = reference_candidates(criterion, inp)
    torch.testing.assert_close(weight, torch.where(expected, 1.0, 0.1) * cand)
    assert m["targeted_frac"] == pytest.approx(expected.sum().item() / cand.sum().item())
    assert m["token_weight_mean"] == pytest.approx(weight.sum().item() / cand.sum().item())


@pytest.mark.parametrize("criterion", ["entropy", "surprisal", "advantage_entropy"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("percentile", [0.3, 0.5, 0.8, 0.99])
def test_exactly_k_targeted_per_unit(criterion, scope, percentile):
    inp = ragged_inputs(seed=5, tie_levels=3, zero_rows=True)
    _, targeted, _ = compute_token_weight(criterion, inp, percentile, 0.0, scope, G)
    per_unit = {"trajectory": 1, "group": G, "batch": inp.token_mask.shape[0]}[scope]
    cand = reference_candidates(criterion, inp)
    for start in range(0, inp.token_mask.shape[0], per_unit):
        rows = slice(start, start + per_unit)
        length = int(cand[rows].sum())
        assert int(targeted[rows].sum()) == math.ceil(length * (1 - percentile) - 1e-6)


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


def test_ties_at_threshold_later_position_wins():
    # was: every token tied with the k-th score targeted (3 of 5 here); now exactly k = 1
    score = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    _, targeted, _ = token_credit(score, mask, 0.8, 0.0)  # k = 1: the largest is tied three times
    assert targeted.tolist() == [[False, False, False, True, False]]
    _, targeted, _ = token_credit(score, mask, 0.6, 0.0)  # k = 2: the two later of the three ties
    assert targeted.tolist() == [[False, False, True, True, False]]
    _, targeted, _ = token_credit(score, mask, 0.2, 0.0)  # k = 4: all above 1.0 and 1.0 itself
    assert targeted.tolist() == [[True, True, True, True, False]]


@pytest.mark.parametrize("length", [1, 2, 7, 10, 33])
def test_all_zero_entropy_response_at_half_targets_its_last_half(length):
    # fp32 entropy of a confident token is exactly 0.0: previously the whole response was targeted
    inp = CreditInputs(torch.ones(1, length, dtype=torch.bool), entropy=torch.zeros(1, length))
    _, targeted, m = compute_token_weight("entropy", inp, 0.5, 0.0)
    k = math.ceil(length / 2)
    assert targeted[0].tolist() == [False] * (length - k) + [True] * k
    assert m["targeted_frac"] == k / length
    _, by_position, _ = compute_token_weight("position", inp, 0.5, 0.0)
    assert torch.equal(targeted, by_position)  # all ties: entropy degenerates to position


def test_zero_entropy_ties_at_group_and_batch_scope():
    # two trajectories (lengths 4 and 6, right-padded to 6) of exact-zero entropy but one token of row 0
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    entropy = torch.zeros(2, 6)
    entropy[0, 1] = 0.7
    inp = CreditInputs(mask, entropy=entropy)
    for scope in ("group", "batch"):  # L = 10, percentile 0.6: k = 4 = the 0.7 token + the 3 last zeros
        _, targeted, m = compute_token_weight("entropy", inp, 0.6, 0.0, scope, group_size=2)
        assert targeted.tolist() == [[False, True, False, False, False, False],
                                     [False, False, False, True, True, True]]
        assert m["targeted_frac"] == pytest.approx(0.4)
    _, targeted, _ = compute_token_weight("entropy", inp, 0.6, 0.0, "trajectory")
    # k = ceil(4 * 0.4) = 2 and ceil(6 * 0.4) = 3
    assert targeted.tolist() == [[False, True, False, True, False, False],
                                 [False, False, False, True, True, True]]


def test_confident_fp32_tokens_have_exact_zero_entropy_and_exactly_k_targeted():
    # 8 tokens: 6 confident (fp32 entropy exactly 0.0), 2 uncertain at positions 1 and 4
    logits = torch.full((8, 5), -200.0)
    logits[:, 0] = 200.0
    logits[1] = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    logits[4] = torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0])
    _, entropy = logits_logprob_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert (entropy[[0, 2, 3, 5, 6, 7]] == 0.0).all() and (entropy[[1, 4]] > 0).all()
    inp = CreditInputs(torch.ones(1, 8, dtype=torch.bool), entropy=entropy[None, :].float())
    _, targeted, m = compute_token_weight("entropy", inp, 0.5, 0.0)
    assert targeted[0].tolist() == [False, True, False, False, True, False, True, True]
    assert m["targeted_frac"] == 0.5


def advantage_batch(length=100, rows=8, zero_rows=(0, 2, 4, 6)):
    """8 rows of 100 tokens with distinct entropies; A = 0 on ``zero_rows``, +-1 elsewhere."""
    g = torch.Generator().manual_seed(7)
    entropy = torch.rand(rows, length, generator=g) + 0.1
    adv = torch.tensor([0.0 if i in zero_rows else (-1.0) ** i for i in range(rows)])[:, None].expand(rows, length)
    return CreditInputs(torch.ones(rows, length, dtype=torch.bool), entropy=entropy, advantages=adv.clone())


def test_advantage_entropy_zero_advantage_rows_count_nowhere():
    # 4 of 8 rows at A = 0, p = 0.8, decay 0: k = ceil(100 * 0.2) = 20 in each of the 4 other rows.
    # Previously the zero rows were all tied at |A| H = 0 and fully targeted: 4*100 + 4*20 = 480.
    inp = advantage_batch()
    weight, targeted, m = compute_token_weight("advantage_entropy", inp, 0.8, 0.0)
    assert targeted.sum(dim=-1).tolist() == [0, 20, 0, 20, 0, 20, 0, 20]
    assert aggregation_denominator("token_mean", weight) == 80.0  # 4 * 20
    for agg in ("seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        assert aggregation_denominator(agg, weight) == 4.0  # the 4 rows with A != 0
    assert m["targeted_frac"] == pytest.approx(0.2)  # of the 400 candidate tokens
    # decay 0.1: untargeted candidates weigh 0.1, zero-advantage tokens still 0
    weight, _, m = compute_token_weight("advantage_entropy", inp, 0.8, 0.1)
    assert (weight[0::2] == 0).all()
    assert aggregation_denominator("token_mean", weight) == pytest.approx(4 * (20 + 0.1 * 80))
    assert m["token_weight_mean"] == pytest.approx((80 + 0.1 * 320) / 400)
    # decay 1 (vanilla GRPO weights over the learning tokens): the denominator is 400, not 800
    weight, _, _ = compute_token_weight("advantage_entropy", inp, 0.8, 1.0)
    assert aggregation_denominator("token_mean", weight) == 400.0


def test_advantage_entropy_group_and_batch_scope_rank_only_nonzero_advantages():
    # groups of 4: group 0 is all A = 0 (equal rewards), group 1 is all A != 0
    inp = advantage_batch(zero_rows=(0, 1, 2, 3))
    weight, targeted, _ = compute_token_weight("advantage_entropy", inp, 0.8, 0.0, "group", group_size=4)
    assert int(targeted[:4].sum()) == 0 and int(targeted[4:].sum()) == 80  # ceil(400 * 0.2)
    assert aggregation_denominator("token_mean", weight) == 80.0
    assert aggregation_denominator("seq_mean_token_sum", weight) == float((targeted[4:].sum(-1) > 0).sum())
    _, targeted_b, _ = compute_token_weight("advantage_entropy", inp, 0.8, 0.0, "batch")
    assert int(targeted_b[:4].sum()) == 0 and int(targeted_b.sum()) == 80  # L = 400 candidates, not 800
    # |A| H ranks the candidates: at group scope the 80 targeted are the 80 highest entropies of rows 4-7
    top = inp.entropy[4:].flatten().topk(80).values.min()
    assert torch.equal(targeted[4:], inp.entropy[4:] >= top)


def test_zero_advantage_tokens_stay_candidates_for_other_criteria():
    inp = advantage_batch()
    weight, targeted, _ = compute_token_weight("entropy", inp, 0.8, 0.0)
    assert targeted.sum(dim=-1).tolist() == [20] * 8
    assert aggregation_denominator("token_mean", weight) == 160.0


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
