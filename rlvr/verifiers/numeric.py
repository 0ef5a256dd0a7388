"""Exact numbers and lists of numbers, decided without sympy (the verifiers' fast path).

Design: most GSM8K and MATH answers are plain numbers -- integers, decimals, ``\\frac{a}{b}``,
mixed numbers, ``a/b``, scientific notation, percentages -- or short lists of them.  Those are
parsed here with :class:`fractions.Fraction` (exact, linear time, no eval) and compared directly,
so sympy is reached only for genuinely symbolic answers.  Two exact values must be equal; when
either side was written as a decimal it carries rounding, so a relative tolerance of 1e-6 applies.
A percentage ``p%`` equals both ``p`` and ``p/100`` (MATH writes "10%" and expects "10").
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple, Optional, Tuple

RTOL = Fraction(1, 10**6)  # relative tolerance when either side is a decimal
MAX_EXPONENT = 400  # |k| in a x 10^k beyond this is left to the guarded symbolic path
MAX_DIGITS = 400  # longer numerals are not answers (and int() of >4300 digits raises)


class Num(NamedTuple):
    value: Fraction
    exact: bool  # False when written with a decimal point (the writer rounded)
    percent: bool  # written with a trailing %


_D = r"\d+(?:\.\d*)?|\.\d+"
_SCALAR = re.compile(
    rf"^(?P<sign>[-+]?)(?:"
    rf"(?P<mixed>\d+)\\frac\{{(?P<mn>\d+)\}}\{{(?P<md>\d+)\}}"
    rf"|\\frac\{{(?P<fn>[-+]?(?:{_D}))\}}\{{(?P<fd>[-+]?(?:{_D}))\}}"
    rf"|(?P<sn>{_D})/(?P<sd>{_D})"
    rf"|(?P<m>{_D})(?:(?:\\times|\\cdot|\*)10\^(?:\{{(?P<e1>[-+]?\d+)\}}|(?P<e2>\d))|[eE](?P<e3>[-+]?\d+))?"
    rf")(?P<pct>%?)$"
)


def _dec(text: str) -> Tuple[Fraction, bool]:
    return Fraction(text), "." not in text


def parse_number(key: str) -> Optional[Num]:
    """One number in normalised form (no spaces), or None.

    >>> parse_number(r"-\\frac{3}{4}").value, parse_number("1\\\\frac{4}{5}").value
    (Fraction(-3, 4), Fraction(9, 5))
    >>> parse_number(r"1.5\\times10^{3}")
    Num(value=Fraction(1500, 1), exact=False, percent=False)
    """
    if not key or len(key) > MAX_DIGITS:
        return None
    m = _SCALAR.match(key)
    if not m:
        return None
    g = m.groupdict()
    try:
        if g["mixed"] is not None:
            value, exact = Fraction(int(g["mixed"])) + Fraction(int(g["mn"]), int(g["md"])), True
        elif g["fn"] is not None or g["sn"] is not None:
            (n, en), (d, ed) = _dec(g["fn"] or g["sn"]), _dec(g["fd"] or g["sd"])
            value, exact = n / d, en and ed
        else:
            value, exact = _dec(g["m"])
            exp = g["e1"] or g["e2"] or g["e3"]
            if exp is not None:
                if abs(int(exp)) > MAX_EXPONENT:
                    return None
                value, exact = value * Fraction(10) ** int(exp), False
    except (ValueError, ZeroDivisionError):
        return None
    return Num(-value if g["sign"] == "-" else value, exact, bool(g["pct"]))


def close(a: Fraction, b: Fraction, exact: bool) -> bool:
    """Equal if both are exact; otherwise within relative tolerance RTOL (exact arithmetic)."""
    if exact:
        return a == b
    return abs(a - b) <= RTOL * max(abs(a), abs(b))


def numbers_equal(a: Num, b: Num) -> bool:
    """Value equality with the percentage rule (``p%`` equals ``p`` and ``p/100``)."""
    exact = a.exact and b.exact
    if a.percent == b.percent:
        return close(a.value, b.value, exact)
    pct, other = (a, b) if a.percent else (b, a)
    return close(pct.value, other.value, exact) or close(pct.value / 100, other.value, exact)


_BRACKETS = {"(": ")", "[": "]", "\\{": "\\}"}


def parse_number_list(key: str) -> Optional[Tuple[str, Tuple[Num, ...]]]:
    """``(1,-2)`` / ``[0,3]`` / ``\\{1,2\\}`` / ``1,2`` / ``5`` -> (delimiters, numbers), or None.

    The delimiters are the opening and closing bracket ("" for a bare list, "{}" for a set).
    """
    delims, body = "", key
    for op, cl in (("\\{", "\\}"), ("(", ")"), ("(", "]"), ("[", "]"), ("[", ")")):
        if key.startswith(op) and key.endswith(cl) and len(key) > len(op) + len(cl):
            delims, body = ("{}" if op == "\\{" else op + cl), key[len(op) : -len(cl)]
            break
    items = []
    for part in body.split(","):
        num = parse_number(part)
        if num is None:
            return None
        items.append(num)
    return delims, tuple(items)


def _unordered_equal(a: Tuple[Num, ...], b: Tuple[Num, ...]) -> bool:
    left = list(b)
    for x in a:
        hit = next((i for i, y in enumerate(left) if numbers_equal(x, y)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


def compare_number_lists(a_key: str, b_key: str) -> Optional[bool]:
    """Decide equality of two numeric answers, or None when either is not purely numeric.

    Bare lists and ``\\{...\\}`` are unordered (sets of solutions); bracketed lists are ordered
    and must use the same brackets (``(1,2)`` vs ``[1,2]`` is left to the symbolic path).
    """
    a, b = parse_number_list(a_key), parse_number_list(b_key)
    if a is None or b is None:
        return None
    (da, xa), (db, xb) = a, b
    unordered = {"", "{}"}
    if da in unordered and db in unordered:
        return len(xa) == len(xb) and _unordered_equal(xa, xb)
    if da != db:
        return None if len(xa) == len(xb) else False
    return len(xa) == len(xb) and all(numbers_equal(x, y) for x, y in zip(xa, xb))
