"""The GSM8K verifier: extract the final number, normalise it, compare exactly.

Design: GSM8K answers are numbers (Cobbe et al., arXiv 2110.14168, end each solution with
``#### N``), so no sympy is needed.  Extraction is configurable (``verifier.gsm8k_extract``):

- ``hash``        the first number after the last ``####``;
- ``boxed``       the last number inside the last ``\\boxed{...}``;
- ``last_number`` the last number anywhere in the response;
- ``auto``        ``hash`` if ``####`` occurs, else ``boxed`` if a box occurs, else ``last_number``.

Numbers are read with thousands separators (``1,600``), ``$``/``\\$``, units and a trailing
``.0`` ignored and compared as exact fractions (``18.0 == 18``, ``18.5 != 18``).  The ground truth
is either the number or a full gold solution ending in ``#### N``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Dict, Optional

from rlvr.verifiers.latex import last_boxed

MAX_NUMBER_CHARS = 100  # a longer digit run is not a GSM8K answer

# a minus sign counts only where it cannot be a binary minus ("5-3" -> 3, "is -3" -> -3)
_NUMBER = re.compile(r"(?:(?<![\w)\]}])-)?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+")
_FRACTION = re.compile(r"^\s*(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}\s*$")
_LATEX_NOISE = re.compile(r"\\[,!;: ]|\{,\}|\\\$|\\text\{[^{}]*\}|\\mbox\{[^{}]*\}|\\%|%")


def _to_fraction(token: str) -> Optional[Fraction]:
    digits = token.replace(",", "").replace("$", "").replace(" ", "")
    if len(digits) > MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(digits)
    except (ValueError, ZeroDivisionError):
        return None


_NUMBER_CHARS = "0123456789,.$-"  # every character a _NUMBER match can contain


def _first_number(text: str) -> Optional[Fraction]:
    m = _NUMBER.search(text)
    return _to_fraction(m.group(0)) if m else None


def last_number_token(text: str) -> Optional[str]:
    """The last ``_NUMBER`` match of ``text`` (= ``findall(text)[-1]``), found without a full scan.

    A hostile 1 MB answer holds ~500k numbers (listing them all to keep one cost ~135 ms) or none
    (the regex still tries every position: ~90 ms).  Every match ends with a digit and holds only
    ``_NUMBER_CHARS``, and a digit is always inside some match, so the last match ends at the last
    digit and lies in the run of number characters around it: scan only that run.  Its start
    follows a character no match contains, so no match of the full scan straddles it, and look-behinds
    still see the text before ``pos``; the character after the last digit is no digit, as the end of
    the scanned range is not.
    """
    last_digit = max(map(text.rfind, "0123456789"))
    if last_digit < 0:
        return None
    start = len(text[:last_digit].rstrip(_NUMBER_CHARS))
    last = None
    for last in _NUMBER.finditer(text, start, last_digit + 1):
        pass
    return last.group(0) if last else None


def _last_number(text: str) -> Optional[Fraction]:
    token = last_number_token(text)
    return _to_fraction(token) if token is not None else None


def extract_hash(response: str) -> Optional[Fraction]:
    if "####" not in response:
        return None
    return _first_number(response.rsplit("####", 1)[1])


def extract_boxed(response: str) -> Optional[Fraction]:
    box = last_boxed(response)
    if box is None:
        return None
    frac = _FRACTION.match(box)
    if frac:
        sign, num, den = frac.groups()
        value = _to_fraction(f"{sign}{num}/{den}") if den.strip("0") else None
        return value
    return _last_number(_LATEX_NOISE.sub(" ", box))


def extract_last_number(response: str) -> Optional[Fraction]:
    return _last_number(response)


def extract_auto(response: str) -> Optional[Fraction]:
    if "####" in response:
        return extract_hash(response)
    if "\\boxed" in response or "\\fbox" in response:
        return extract_boxed(response)
    return extract_last_number(response)


EXTRACTORS: Dict[str, Callable[[str], Optional[Fraction]]] = {
    "auto": extract_auto,
    "hash": extract_hash,
    "boxed": extract_boxed,
    "last_number": extract_last_number,
}


def _extractor(extract: str) -> Callable[[str], Optional[Fraction]]:
    if extract not in EXTRACTORS:
        raise ValueError(f"unknown gsm8k_extract '{extract}'; valid: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[extract]


@lru_cache(maxsize=8192)
def gold_number(ground_truth: str) -> Optional[Fraction]:
    """The gold value: after ``####`` when given a worked solution, else the first number."""
    if "####" in ground_truth:
        return extract_hash(ground_truth)
    return _first_number(ground_truth)


def gsm8k_reward(response: str, ground_truth: str, extract: str = "auto") -> float:
    """1.0 when the extracted final number equals the gold number.

    >>> gsm8k_reward("so she makes $18.\\n#### 18", "18"), gsm8k_reward(r"\\boxed{1,600}", "1600")
    (1.0, 1.0)
    >>> gsm8k_reward("The answer is 18.0 dollars", "18"), gsm8k_reward("#### 19", "18")
    (1.0, 0.0)
    """
    fn = _extractor(extract)
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        return 0.0
    gold = gold_number(ground_truth)
    got = fn(response)
    return 1.0 if gold is not None and got is not None and got == gold else 0.0


def gsm8k_format(response: str, extract: str = "auto") -> float:
    """1.0 when the answer is present in the form the extraction mode asks for."""
    fn = _extractor(extract)
    if not isinstance(response, str):
        return 0.0
    if extract == "auto":
        fn = extract_hash if "####" in response else extract_boxed
    return 1.0 if fn(response) is not None else 0.0
