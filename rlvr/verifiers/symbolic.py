"""Symbolic equivalence of two *parsed* answers: the last rung of the math verifier.

Security.  Model text reaches sympy only through the ANTLR LaTeX grammar of
``latex2sympy2_extended`` (a well-kept parser; we write no grammar).  Nothing here calls
``sympify``, ``parse_expr``, ``eval`` or ``lambdify`` on model text: those evaluate Python, and a
peer verifier's open RCE is exactly ``parse_expr`` on a generated string.  (The parser's own
``sympy.Number(token)`` sees only NUMBER tokens the lexer has already restricted to digits.)

Bounds.  sympy evaluates eagerly in places (``\\binom`` at parse time, comparisons inside
``Interval``/``FiniteSet``) and a 4-level exponent tower never finishes, so :func:`text_guard`
rejects oversize, over-nested, tower-shaped or heavy-operator text *before* parsing and
:func:`magnitude_ok` rejects any parsed value beyond 10^MAX_LOG10 before anything evaluates.  The
guards make hostile answers cheap; they are not the safety boundary -- the process pool's hard
timeout and memory limit are (``rlvr/verifiers/pool.py``).

Equivalence.  Structure first (sets unordered, tuples/intervals/matrices element-wise, equations
up to a nonzero factor), then values: expressions are evaluated at 30 digits -- at three seeded
random points when they have free symbols -- and compared with a relative tolerance (1e-6 when
either side was written as a decimal, else 1e-10); ``simplify`` is only the fallback for values
that do not evaluate to numbers.
"""

from __future__ import annotations

import math
import random
import re
from functools import lru_cache
from typing import Any, List, Optional

import sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
from sympy import And, Eq, Float, I, Interval, MatrixBase, Symbol, Tuple, Union
from sympy.core.relational import Relational
from sympy.sets.sets import FiniteSet, Set

MAX_PARSE_CHARS = 400  # the longest MATH-500 answer is ~80 characters
MAX_DEPTH = 20  # brackets nested deeper than this are not an answer
MAX_LOG10 = 1000.0  # no value (or intermediate) above 10**1000
MAX_MATRIX_ENTRIES = 100
_CONVERSION = ConversionConfig()

_HEAVY = re.compile(
    r"\\(?:int|iint|iiint|oint|sum|prod|lim|det|operatorname|mathop|partial|vmatrix|Vmatrix"
    r"|begin\{(?:array|cases|align|[vV]matrix))(?![a-zA-Z])"
)
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*[-+]?\s*\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{5,}\s*!")
_BIG_BINOM = re.compile(
    r"\\(?:binom|choose)[^0-9]{0,8}\d{5,}|\\(?:binom|choose)\s*\{[^{}]*\}\s*\{[^{}]*\d{5,}")


def _depth_ok(text: str) -> bool:
    depth = 0
    for c in text:
        if c in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif c in ")]}":
            depth -= 1
    return True


def _exponent_args(text: str):
    """The text of each exponent: the brace group or single token after every ``^``."""
    i = text.find("^")
    while i >= 0:
        j = i + 1
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            depth, k = 0, j
            while k < len(text):
                depth += text[k] == "{"
                depth -= text[k] == "}"
                if depth == 0:
                    break
                k += 1
            yield text[j : k + 1]
        else:
            yield text[j : j + 2]
        i = text.find("^", i + 1)


def text_guard(latex: str) -> bool:
    """Cheap structural checks before the parser sees the text (False: do not parse)."""
    if not latex or len(latex) > MAX_PARSE_CHARS or not latex.isprintable():
        return False
    if not _depth_ok(latex) or _HEAVY.search(latex) or latex.count("!") > 2:
        return False
    if _BIG_EXPONENT.search(latex) or _BIG_FACTORIAL.search(latex) or _BIG_BINOM.search(latex):
        return False
    # exponent towers: an exponent that itself holds a power or a factorial
    return not any(("^" in e or "!" in e or "\\exp" in e) for e in _exponent_args(latex))


# --------------------------------------------------------------------------- magnitude guard
def _log10_abs(x: sympy.Number) -> float:
    """|log10 |x||: how many digits x (or 1/x) has; 0 for zero and the infinities."""
    if x.is_zero or not x.is_finite:
        return 0.0
    if x.is_Float:
        _, _, exp, bc = x._mpf_
        return abs((exp + bc) * math.log10(2.0))
    return max(math.log10(abs(x.p)), math.log10(x.q))


def _log10_bound(e: Any, budget: List[int]) -> float:
    """Upper bound on |log10 |value|| over a parsed tree (a symbol counts as 1); inf if too big."""
    budget[0] -= 1
    if budget[0] < 0:
        return math.inf
    if isinstance(e, (list, tuple, MatrixBase)):
        if isinstance(e, MatrixBase) and e.rows * e.cols > MAX_MATRIX_ENTRIES:
            return math.inf
        return max((_log10_bound(x, budget) for x in e), default=0.0)
    if not isinstance(e, sympy.Basic) or (e.is_Atom and not e.is_Number):
        return 0.0
    if e.is_Number:
        return _log10_abs(e)
    args = [_log10_bound(a, budget) for a in e.args]
    if isinstance(e, sympy.Pow):
        if e.base.is_Number and abs(e.base) in (0, 1):
            return args[1]
        if args[1] > 6.0 or (args[1] > 3.0 and e.base.free_symbols):  # huge power, huge degree
            return math.inf
        return max(args[0], 1.0) * 10.0 ** args[1]
    if isinstance(e, (sympy.factorial, sympy.factorial2, sympy.gamma, sympy.binomial, sympy.exp)):
        top = max(args)
        return math.inf if top > 4.0 else 10.0**top * (top + 1.0)
    if isinstance(e, sympy.Mul):
        return sum(args)
    return max(args, default=0.0) + math.log10(max(len(args), 1))


def magnitude_ok(expr: Any) -> bool:
    """No value in the tree exceeds 10**MAX_LOG10 (so evaluating it cannot run away)."""
    try:
        return _log10_bound(expr, [5000]) <= MAX_LOG10
    except (OverflowError, ValueError, TypeError, RecursionError):
        return False


@lru_cache(maxsize=4096)
def parse_answer(latex: str) -> Optional[Any]:
    """Parsed answer (sympy object), or None when guarded out or unparsable. Cached: golds repeat."""
    if not text_guard(latex):
        return None
    try:
        expr = latex2sympy(latex, normalization_config=None, conversion_config=_CONVERSION)
    except Exception:  # the parser raises bare Exception on syntax errors; RecursionError too
        return None
    if isinstance(expr, list) or not magnitude_ok(expr):
        return None
    return expr


# --------------------------------------------------------------------------- equivalence
_NUM_POINTS = 3
_IMAGINARY = Symbol("i")


def _points(symbols: List[Symbol], count: int = _NUM_POINTS) -> List[dict]:
    """Seeded sample points (exact rationals in +-[0.3, 2.7]); one empty point without symbols."""
    if not symbols:
        return [{}]
    rng = random.Random(0)
    return [{s: sympy.Rational(rng.choice((-1, 1)) * rng.randint(300, 2700), 1000) for s in symbols}
            for _ in range(count)]


def _value(e: Any, subs: dict) -> Optional[complex]:
    try:
        v = complex(e.evalf(30, subs=subs) if subs else e.evalf(30))
    except Exception:  # not a number (undefined function, set, ...) or evaluation failed
        return None
    return v if math.isfinite(v.real) and math.isfinite(v.imag) else None


def _close(a: complex, b: complex, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b)) or abs(a - b) <= 1e-20


def _prepare(e: Any) -> Any:
    """Evaluate percent/unevaluated nodes (values are bounded by magnitude_ok); i is imaginary."""
    try:
        e = e.doit()
    except Exception:
        pass
    try:
        return e.subs(_IMAGINARY, I) if e.has(_IMAGINARY) else e
    except Exception:
        return e


def _symbols(*exprs: Any) -> List[Symbol]:
    found = set()
    for e in exprs:
        found |= getattr(e, "free_symbols", set())
    return sorted(found, key=str)


def _simplifies_to_zero(e: Any) -> bool:
    try:
        return sympy.simplify(e) == 0
    except Exception:
        return False


def _expr_equal(a: Any, b: Any) -> bool:
    a, b = _prepare(a), _prepare(b)
    if a == b:
        return True
    if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
        return False
    rtol = 1e-6 if (a.has(Float) or b.has(Float)) else 1e-10
    symbols = _symbols(a, b)
    checked = 0
    for subs in _points(symbols):
        va, vb = _value(a, subs), _value(b, subs)
        if va is None or vb is None:
            continue
        if not _close(va, vb, rtol):
            return False
        checked += 1
    if checked >= (2 if symbols else 1):
        return True
    return _simplifies_to_zero(a - b)


def _proportional(x: Any, y: Any, positive: bool) -> bool:
    """x == c * y for one constant c != 0 (c > 0 if ``positive``): the same equation/inequality."""
    x, y = _prepare(x), _prepare(y)
    ratio, checked = None, 0
    for subs in _points(_symbols(x, y), count=4):
        vx, vy = _value(x, subs), _value(y, subs)
        if vx is None or vy is None:
            continue
        if abs(vx) < 1e-15 or abs(vy) < 1e-15:
            if max(abs(vx), abs(vy)) >= 1e-15:
                return False
            continue
        r = vx / vy
        if ratio is not None and not _close(r, ratio, 1e-9):
            return False
        ratio, checked = r, checked + 1
    if checked < 2:
        return _simplifies_to_zero(x - y) or (not positive and _simplifies_to_zero(x + y))
    return not positive or (ratio.real > 0 and abs(ratio.imag) < 1e-12)


_POSITIVE_FORM = {  # relation -> (expression that is > 0 or >= 0, strict)
    sympy.StrictGreaterThan: lambda r: (r.lhs - r.rhs, True),
    sympy.StrictLessThan: lambda r: (r.rhs - r.lhs, True),
    sympy.GreaterThan: lambda r: (r.lhs - r.rhs, False),
    sympy.LessThan: lambda r: (r.rhs - r.lhs, False),
}


def _is_relation(e: Any) -> bool:
    if isinstance(e, And):
        return all(isinstance(a, Relational) for a in e.args)
    return isinstance(e, Relational)


def _relations_equal(a: Any, b: Any) -> bool:
    if isinstance(a, And) or isinstance(b, And):
        xa, xb = getattr(a, "_unsorted_args", a.args), getattr(b, "_unsorted_args", b.args)
        return isinstance(a, And) and isinstance(b, And) and len(xa) == len(xb) and all(
            _relations_equal(p, q) for p, q in zip(xa, xb))
    if isinstance(a, (Eq, sympy.Ne)) or isinstance(b, (Eq, sympy.Ne)):
        return type(a) is type(b) and _proportional(a.lhs - a.rhs, b.lhs - b.rhs, positive=False)
    if type(a) not in _POSITIVE_FORM or type(b) not in _POSITIVE_FORM:
        return False
    (xa, strict_a), (xb, strict_b) = _POSITIVE_FORM[type(a)](a), _POSITIVE_FORM[type(b)](b)
    return strict_a == strict_b and _proportional(xa, xb, positive=True)


def _unwrap_assignment(e: Any) -> Any:
    """``x = 3`` -> 3 (only where the other side is not a relation)."""
    if isinstance(e, And) and all(isinstance(a, Eq) for a in e.args):
        e = getattr(e, "_unsorted_args", e.args)[-1]
    if isinstance(e, Eq) and isinstance(e.lhs, Symbol):
        return e.rhs
    return e


def _elements(e: Any):
    """(kind, items): 'ordered' for tuples, 'unordered' for sets/unions and scalars."""
    if isinstance(e, Tuple):
        return "ordered", list(e.args)
    if isinstance(e, FiniteSet):
        return "unordered", list(getattr(e, "_unsorted_args", e.args))
    if isinstance(e, Union):
        return "unordered", list(e.args)
    return "unordered", [e]


def _collections_equal(gold: Any, pred: Any) -> bool:
    (kg, xg), (_, xp) = _elements(gold), _elements(pred)
    if len(xg) != len(xp):
        return False
    if kg == "ordered":  # the gold decides: an ordered answer must be written in order
        return all(_equal(g, p) for g, p in zip(xg, xp))
    left = list(xp)
    for g in xg:
        hit = next((i for i, p in enumerate(left) if _equal(g, p)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _as_matrix(e: Any) -> Any:
    if isinstance(e, sympy.MatrixExpr) and not isinstance(e, MatrixBase):
        try:
            e = e.doit()
        except Exception:
            pass
    return e


def _equal(gold: Any, pred: Any) -> bool:
    rel_g, rel_p = _is_relation(gold), _is_relation(pred)
    if rel_g != rel_p:
        gold, pred = _unwrap_assignment(gold), _unwrap_assignment(pred)
        rel_g, rel_p = _is_relation(gold), _is_relation(pred)
    if gold == pred:
        return True
    if rel_g or rel_p:
        if rel_g and rel_p:
            return _relations_equal(gold, pred)
        rel, other = (gold, pred) if rel_g else (pred, gold)
        return isinstance(other, Set) and _equal(rel.as_set(), other)
    gold, pred = _as_matrix(gold), _as_matrix(pred)
    if isinstance(gold, MatrixBase) or isinstance(pred, MatrixBase):
        return (isinstance(gold, MatrixBase) and isinstance(pred, MatrixBase) and gold.shape == pred.shape
                and all(_equal(g, p) for g, p in zip(gold, pred)))
    if isinstance(gold, Interval) and isinstance(pred, Interval):
        return (gold.left_open == pred.left_open and gold.right_open == pred.right_open
                and _equal(gold.start, pred.start) and _equal(gold.end, pred.end))
    # "(a, b)" is an open interval or an ordered pair, whichever the other side says
    if isinstance(gold, Interval) and gold.left_open and gold.right_open and isinstance(pred, Tuple):
        gold = Tuple(gold.start, gold.end)
    if isinstance(pred, Interval) and pred.left_open and pred.right_open and isinstance(gold, Tuple):
        pred = Tuple(pred.start, pred.end)
    if isinstance(gold, (Tuple, FiniteSet, Union)) or isinstance(pred, (Tuple, FiniteSet, Union)):
        return _collections_equal(gold, pred)
    if isinstance(gold, Set) or isinstance(pred, Set):
        return False  # distinct intervals/special sets that were not structurally equal
    return _expr_equal(gold, pred)


def equivalent(gold: Any, pred: Any) -> bool:
    """Are two parsed answers the same mathematical object?  Never raises."""
    try:
        return bool(_equal(gold, pred))
    except Exception:  # sympy raises almost anything on odd trees; RecursionError included
        return False
