"""The arithmetic verifier of the quickstart task ("3+16=" -> "19").

Design: the tiny CPU model is taught to answer with the number and stop, so the rule is strict:
the response must *begin* (after optional whitespace) with an integer, optionally negative, and
that integer must equal the gold exactly.  Text before the number scores 0, and only the first
integer counts, so listing candidates gains nothing.
"""

from __future__ import annotations

import re

_LEADING_INT = re.compile(r"\s*(-?\d+)")


def _int(text: str):
    try:
        return int(text)
    except ValueError:  # also Python's 4300-digit limit on int(str)
        return None


def arithmetic_reward(response: str, ground_truth: str) -> float:
    """1.0 when the response's leading integer equals the integer ground truth.

    >>> arithmetic_reward("19", "19"), arithmetic_reward(" -3 apples", "-3"), arithmetic_reward("x 19", "19")
    (1.0, 1.0, 0.0)
    """
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        return 0.0
    m = _LEADING_INT.match(response)
    if m is None or len(m.group(1)) > 100:
        return 0.0
    got, gold = _int(m.group(1)), _int(ground_truth.strip())
    return 1.0 if got is not None and got == gold else 0.0


def arithmetic_format(response: str) -> float:
    """1.0 when the response begins with an integer."""
    return 1.0 if isinstance(response, str) and _LEADING_INT.match(response) else 0.0
