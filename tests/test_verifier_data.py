"""Verifiers on the real evaluation sets: every row of GSM8K test and MATH-500 (no sampling).

Data: ``tests/data/eval/`` (see its ``SOURCE.md``).
"""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from rlvr.verifiers import VERIFIERS
from rlvr.verifiers.gsm8k import gsm8k_reward
from rlvr.verifiers.latex import normalize

DATA = Path(__file__).resolve().parent / "data" / "eval"

# MATH-500 rows whose gold worked solution does not score 1.0 against its own answer, with the
# reason.  Empty: for all 500 rows the last \boxed{} of the solution is equivalent to the answer
# (8 solutions hold two boxes; the last one is the answer in each).
MATH_SOLUTION_EXCEPTIONS: dict = {}


def _rows(name):
    with open(DATA / name) as f:
        return [json.loads(line) for line in f]


def _gsm8k_number(row):
    return row["answer"].rsplit("####", 1)[1].strip().replace(",", "")


def test_gsm8k_whole_file():
    rows = _rows("gsm8k_test.jsonl")
    assert len(rows) == 1319
    failures = []
    for i, row in enumerate(rows):
        n = Fraction(_gsm8k_number(row))
        assert n.denominator == 1
        n = int(n)
        gold = _gsm8k_number(row)
        cases = [
            (row["answer"], 1.0),  # the gold worked solution, "#### N"
            (f"The answer is $\\boxed{{{n}}}$.", 1.0),
            (f"She makes ${n:,} in total.", 1.0),  # thousands separators
            (f"#### {n:,}", 1.0),
            (f"#### {n}.0", 1.0),
            (f"\\boxed{{{n}.0}}", 1.0),
            (f"#### {n + 1}", 0.0),
            (f"\\boxed{{{n + 1}}}", 0.0),
            (f"so the answer is {n + 1}", 0.0),
        ]
        for response, expected in cases:
            for ground_truth in (gold, row["answer"]):  # bare number or full gold solution
                if VERIFIERS.get("gsm8k")(response, ground_truth) != expected:
                    failures.append((i, response[-40:], ground_truth[-20:], expected))
        if gsm8k_reward(row["answer"], gold, extract="hash") != 1.0:
            failures.append((i, "hash mode", gold, 1.0))
        if gsm8k_reward(row["answer"], gold, extract="last_number") != 1.0:
            failures.append((i, "last_number mode", gold, 1.0))
    assert not failures, failures[:10]


def test_math500_boxed_answer_every_row():
    rows = _rows("math500_test.jsonl")
    assert len(rows) == 500
    bad = [i for i, r in enumerate(rows)
           if VERIFIERS.get("math")(f"Thus the answer is $\\boxed{{{r['answer']}}}$.", r["answer"]) != 1.0]
    assert bad == []


def test_math500_gold_solutions():
    rows = _rows("math500_test.jsonl")
    bad = {i: r["answer"] for i, r in enumerate(rows) if VERIFIERS.get("math")(r["solution"], r["answer"]) != 1.0}
    assert set(bad) == set(MATH_SOLUTION_EXCEPTIONS), bad
    assert len(bad) <= 0.01 * len(rows)


def _other_answer(rows, i):
    """The next row whose answer has a different normal form (``x=5`` and ``5`` are the same)."""
    key = normalize(rows[i]["answer"]).key
    j = (i + 1) % len(rows)
    while normalize(rows[j]["answer"]).key == key:
        j = (j + 1) % len(rows)
    return rows[j]["answer"]


def test_math500_other_rows_answer_scores_zero():
    rows = _rows("math500_test.jsonl")
    bad = []
    for i, row in enumerate(rows):
        other = _other_answer(rows, i)
        if VERIFIERS.get("math")(f"\\boxed{{{other}}}", row["answer"]) != 0.0:
            bad.append((i, row["answer"], other))
    assert bad == []
