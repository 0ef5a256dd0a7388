"""Answer extraction and LaTeX normalisation (string level; no sympy, no eval).

Design: every rewrite here only *removes presentation* -- spacing commands, ``\\left``/``\\right``,
``\\dfrac``/``\\tfrac``, degree signs, dollar signs, thousands separators, a trailing ``\\text{unit}``,
the ``x =`` of an assignment -- so two answers with equal normal forms are equivalent by
construction.  That makes the string match the first and cheapest rung of the ladder in
:mod:`rlvr.verifiers.math_answer`.  The rewrites follow the MATH answer-normalisation of Hendrycks et
al. (arXiv 2103.03874, ``math_equivalence.py``).  Extraction scans braces by hand in one linear
pass (no backtracking regex), so a 1 MB response costs milliseconds; every regex below is linear.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

MAX_ANSWER_CHARS = 1000  # a longer boxed answer is not a MATH answer: scored 0 without parsing

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _matching_brace(text: str, open_pos: int) -> int:
    """Index of the ``}`` closing ``text[open_pos] == "{"``, or -1; escaped ``\\{``/``\\}`` are skipped."""
    depth, i, n = 0, open_pos, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces), else None.

    The *last* command decides: if it is unbalanced (a truncated answer) there is no answer.
    ``\\boxed 5`` (one token, no braces) is accepted as in the MATH solutions.

    >>> last_boxed(r"so $x = \\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{1} then \\boxed{2") is None
    True
    """
    if not isinstance(text, str):
        return None
    pos, cmd = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if pos < 0:
        return None
    i = pos + len(cmd)
    while i < len(text) and text[i] in " \t\n":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _matching_brace(text, i)
        return text[i + 1 : end].strip() if end >= 0 else None
    token = re.match(r"[^\s$]+", text[i:]) if i > pos + len(cmd) else None
    return token.group(0) if token else None


# --------------------------------------------------------------------------- normalisation
class Normal(NamedTuple):
    """Two views of one normalised answer."""

    latex: str  # spacing collapsed, for the parser
    key: str  # all whitespace removed, for the string match and the numeric fast path


_SPACES = re.compile(r"(\\\\)|\\[,;:! ]|\\q?quad|~|\\displaystyle|\\textstyle")  # keep \\ (row break)
_THOUSANDS_SPACED = re.compile(r"(\d),\\!\s*(?=\d{3}(?!\d))|(\d)\{,\}(?=\d{3}(?!\d))")
_FRAC_CMD = re.compile(r"\\[dtc]frac")
_BINOM_CMD = re.compile(r"\\[dt]binom")
_LEFT_RIGHT = re.compile(
    r"\\(?:left|right|[bB]igg?[lr]?)\s*(?=[()\[\]|.]|\\[{}|]|\\[lr]?vert|\\langle|\\rangle)")
_LR_DOT = re.compile(r"(?<=\\left)\.|(?<=\\right)\.")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\^\s*\{?\s*\\degree\s*\}?|\\circ|\\degree|°")
_DOLLARS = re.compile(r"\\\$|\$")
_PERCENT = re.compile(r"\\%")
_FONT_WRAP = re.compile(
    r"\\(?:text(?:rm|bf|it|normal|sf|tt)?|mbox|math(?:rm|bf|it|sf|tt|normal)|bm|boldsymbol|operatorname)"
    r"\s*\{([^{}]*)\}")
_TRAILING_UNIT = re.compile(
    r"^(.*?\S)\s*\\(?:text|mbox|mathrm)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}\s*(?:\^\s*\{?\d\}?)?$")
_BARE_UNIT = re.compile(r"^(-?[\d.,/]+)\s*(?:[a-zA-Z]{2,}\.?)(?:\s+[a-zA-Z]+)*(?:\^\d)?$")
_AND_OR = re.compile(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|(?<![a-zA-Z\\])(?:and|or)(?![a-zA-Z]))\s*")
_FRAC_SHORT = [
    (re.compile(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*([0-9a-zA-Z])\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])"), r"\\frac\1{\2}"),
    (re.compile(r"\\sqrt\s*([0-9a-zA-Z])"), r"\\sqrt{\1}"),
]
_LEADING_DOT = re.compile(r"(?<![\d}])\.(\d)")
_ASSIGN = re.compile(r"^\s*[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*(?!=)(.+)$")
_CHOICE = re.compile(r"^\(?([A-E])\)?$")
_BASE_SUB = re.compile(r"_\{(\w)\}")
_UNICODE = str.maketrans({"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "π": "\\pi ", "∞": "\\infty ",
                          "≤": "\\le ", "≥": "\\ge ", "√": "\\sqrt", "\u00a0": " "})
_SYNONYMS = [
    (re.compile(r"\\(?:infinity|infin)\b"), r"\\infty"),
    (re.compile(r"\\varnothing|\\emptyset|\\\{\s*\\\}"), r"\\emptyset"),
    (re.compile(r"\\leq?(?![a-zA-Z])|\\leqslant"), r"\\le "),
    (re.compile(r"\\geq?(?![a-zA-Z])|\\geqslant"), r"\\ge "),
    (re.compile(r"\\neq?(?![a-zA-Z])"), r"\\ne "),
    (re.compile(r"\\dots|\\ldots|\\cdots"), r""),
]
_WS = re.compile(r"\s+")
_COMMA_NUMBER = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?$")


def _unwrap_fonts(s: str) -> str:
    for _ in range(4):  # \text{\textbf{x}}: a few passes, each linear
        t = _FONT_WRAP.sub(r"\1", s)
        if t == s:
            break
        s = t
    return s


def _split_top(s: str, sep: str = ",") -> list:
    """Split on ``sep`` outside (), [], {} (escaped braces count as brackets)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _strip_assignment(s: str) -> str:
    """``x = 3`` -> ``3``; ``x \\in [1, 2]`` -> ``[1, 2]``; ``x=1, x=2`` -> ``1, 2`` (one ``=`` only)."""
    parts = _split_top(s)
    out = []
    for part in parts:
        m = _ASSIGN.match(part)
        out.append(m.group(1) if m and "=" not in m.group(1) else part)
    return ",".join(out)


def normalize(answer: str) -> Optional[Normal]:
    """Normal form of one final answer; None when it is empty or too long to be an answer.

    >>> normalize(r"\\left( 3, \\dfrac{\\pi}{2} \\right)").key
    '(3,\\\\frac{\\\\pi}{2})'
    >>> normalize(r"10,\\!080").key, normalize(r"90^\\circ").key, normalize(r"x = \\$5.").key
    ('10080', '90', '5')
    """
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    s = answer.translate(_UNICODE).replace("\x00", "")
    s = _THOUSANDS_SPACED.sub(lambda m: m.group(1) or m.group(2), s)
    s = _LR_DOT.sub("", s)
    s = _SPACES.sub(lambda m: m.group(1) or " ", s)
    s = _FRAC_CMD.sub(r"\\frac", s)
    s = _BINOM_CMD.sub(r"\\binom", s)
    s = _LEFT_RIGHT.sub("", s).replace("\\left", "").replace("\\right", "")
    s = _DEGREES.sub("", s)
    s = _DOLLARS.sub("", s)
    s = _PERCENT.sub("%", s)
    m = _TRAILING_UNIT.match(s)
    if m:
        s = m.group(1)
    s = _unwrap_fonts(s)
    m = _BARE_UNIT.match(s.strip())
    if m:
        s = m.group(1)
    for pattern, repl in _SYNONYMS:
        s = pattern.sub(repl, s)
    s = _AND_OR.sub(",", s)
    for pattern, repl in _FRAC_SHORT:
        s = pattern.sub(repl, s)
    s = _BASE_SUB.sub(r"_\1", s)
    s = _WS.sub(" ", s).strip().rstrip(".").strip()
    s = _strip_assignment(s).strip()
    s = _LEADING_DOT.sub(r"0.\1", s)
    if _COMMA_NUMBER.match(s.replace(" ", "")):
        s = s.replace(",", "").replace(" ", "")
    choice = _CHOICE.match(s.replace(" ", ""))
    if choice:
        s = choice.group(1)
    if not s:
        return None
    return Normal(latex=s, key=s.replace(" ", ""))


_WORD = re.compile(r"^[A-Za-z][A-Za-z ]*[A-Za-z]$")


def is_word(key_or_latex: str) -> bool:
    """A text answer such as ``Evelyn`` or ``east`` (two letters or more, no LaTeX)."""
    return bool(_WORD.match(key_or_latex))


_BASE_NUMERAL = re.compile(r"^[0-9A-Za-z]+_\d+$")


def is_base_numeral(key: str) -> bool:
    """``52_8``: a numeral in another base -- compared as written, never parsed."""
    return bool(_BASE_NUMERAL.match(key))


_SET_OPS = re.compile(r"\\(?:pm|mp|cup|cap|setminus)(?![a-zA-Z])")
_NO_SHAPE = re.compile(r"[<>=]|\\(?:le|ge|ne|lt|gt|in|mathbb|begin|emptyset)(?![a-zA-Z])")


def _depth_one_commas(key: str) -> tuple:
    """(comma at depth 0, the whole string is one bracket pair with a comma directly inside)."""
    depth, top_comma, inner_comma, closes_at_end = 0, False, False, True
    i = 0
    while i < len(key):
        c = key[i:i + 2] if key.startswith(("\\{", "\\}"), i) else key[i]
        if c in ("(", "[", "{", "\\{"):
            depth += 1
        elif c in (")", "]", "}", "\\}"):
            depth -= 1
            if depth == 0 and i + len(c) < len(key):
                closes_at_end = False
        elif c == ",":
            top_comma |= depth == 0
            inner_comma |= depth == 1
        i += len(c)
    wrapped = key[:1] in "([" or key.startswith("\\{")
    return top_comma, wrapped and closes_at_end and inner_comma


def is_collection(key: str) -> Optional[bool]:
    """True for a list, tuple, interval, set or ``a \\pm b``; False for one scalar expression;
    None when the shape alone cannot tell (relations, ``\\mathbb``, matrices, the empty set)."""
    if _NO_SHAPE.search(key):
        return None
    top_comma, wrapped_list = _depth_one_commas(key)
    if top_comma or wrapped_list:
        return True
    depth_zero = re.sub(r"\{[^{}]*\}", "", key)  # crude: drop innermost groups before looking for \pm
    return bool(_SET_OPS.search(depth_zero))
