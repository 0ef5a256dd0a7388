"""The MATH verifier: the response's last ``\\boxed{}`` against the gold answer.

Design: a ladder from cheap to costly where each rung decides only when it can be sure, so the
common cases never reach sympy (Hendrycks et al., arXiv 2103.03874, define the answer format):

1. extraction -- the last ``\\boxed{...}``/``\\fbox{...}``; none (or unbalanced) scores 0;
2. normalisation (:mod:`.latex`), then string match;
3. numbers and lists of numbers (:mod:`.numeric`): exact, or relative tolerance for decimals;
4. text answers (``\\text{Evelyn}``) and base-b numerals (``52_8``) compare as written; a
   constant never equals an expression with a free variable, nor a list/interval/set a scalar;
5. sympy: both sides parsed by ``latex2sympy2_extended`` behind guards (:mod:`.symbolic`) and
   compared structurally and numerically.  The gold's normal form and parse are cached.

Model text is never evaluated as Python; time and memory are bounded from outside by the pool.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

from rlvr.verifiers.latex import Normal, is_base_numeral, is_collection, is_word, last_boxed, normalize
from rlvr.verifiers.numeric import compare_number_lists
from rlvr.verifiers.symbolic import equivalent, parse_answer


@lru_cache(maxsize=4096)
def _gold(ground_truth: str) -> Optional[Normal]:
    """A gold answer may be given bare (``\\frac{1}{2}``) or as a worked solution with a box."""
    boxed = last_boxed(ground_truth)
    return normalize(boxed if boxed is not None else ground_truth)


def _is_text(s: str) -> bool:
    return is_word(s) and len(s.replace(" ", "")) >= 3


_SET_NAMES = re.compile(r"\\math(?:bb|cal|frak)\s*\{[^{}]*\}")
_COMMANDS = re.compile(r"\\[a-zA-Z]+")
_VARIABLE = re.compile(r"[a-df-hj-zA-Z]")  # any letter but the constants e and i
_RELATION = re.compile(r"[<>=]|\\[lg]e|\\neq?")


def _has_variable(latex: str) -> bool:
    """A free letter outside LaTeX commands: the answer is an expression, not a number."""
    return bool(_VARIABLE.search(_COMMANDS.sub("", _SET_NAMES.sub("", latex))))


def _constant_vs_expression(gold: Normal, got: Normal) -> bool:
    """One side is a constant, the other has a free variable (and is no relation): unequal."""
    var_gold, var_got = _has_variable(gold.latex), _has_variable(got.latex)
    if var_gold == var_got:
        return False
    with_var = gold.latex if var_gold else got.latex
    return not _RELATION.search(with_var)


def answers_equal(pred: str, ground_truth: str) -> bool:
    """Is the extracted answer ``pred`` equivalent to the gold answer?  Never raises.

    >>> answers_equal(r"\\dfrac{3}{6}", "0.5"), answers_equal(r"(1, 2]", r"(1,2)")
    (True, False)
    """
    gold, got = _gold(ground_truth), normalize(pred)
    if gold is None or got is None:
        return False
    if got.key == gold.key:
        return True
    numeric = compare_number_lists(gold.key, got.key)
    if numeric is not None:
        return numeric
    if _is_text(gold.latex) or _is_text(got.latex):
        return gold.latex.lower() == got.latex.lower()
    if is_base_numeral(gold.key) or is_base_numeral(got.key) or _constant_vs_expression(gold, got):
        return False
    if {is_collection(gold.key), is_collection(got.key)} == {True, False}:  # a list is not a scalar
        return False
    gold_expr, got_expr = parse_answer(gold.latex), parse_answer(got.latex)
    if gold_expr is None or got_expr is None:
        return False
    return equivalent(gold_expr, got_expr)


def math_reward(response: str, ground_truth: str) -> float:
    """1.0 when the last boxed answer of ``response`` is equivalent to ``ground_truth``.

    >>> math_reward(r"... so the answer is $\\boxed{\\frac{14}{3}}$.", r"\\frac{14}{3}")
    1.0
    >>> math_reward("14/3", r"\\frac{14}{3}")  # no box, no answer
    0.0
    """
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        return 0.0
    pred = last_boxed(response)
    return 1.0 if pred is not None and answers_equal(pred, ground_truth) else 0.0


def math_format(response: str) -> float:
    """1.0 when the response ends its work with a non-empty, balanced ``\\boxed{...}``."""
    return 1.0 if isinstance(response, str) and last_boxed(response) else 0.0
