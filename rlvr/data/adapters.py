"""Prompt records and the dataset adapters that make them.

Design: every dataset becomes the same :class:`Prompt` (text, ground truth,
verifier name, meta) through one adapter per dataset, kept in the explicit
``ADAPTERS`` registry whose keys are exactly ``rlvr.config.DATASETS`` (a
contract test checks this).  An adapter is a pure function ``row -> Prompt``
that raises :class:`FieldError` naming the offending field; the loader adds the
file and row number, so every malformed row is reported as
``<file> row <n>: field '<name>': <problem>``.

GSM8K ground truths drop thousands separators ("1,450,000" -> "1450000"), as
the reference GSM8K evaluation does; MATH answers are kept verbatim (LaTeX) for
the math verifier to normalise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A data problem, reported in one line naming the file, the row and the field."""


class FieldError(ValueError):
    """Raised by an adapter: one field of one row is missing, empty or wrong-typed."""

    def __init__(self, field_name: str | None, problem: str) -> None:
        # field_name is None when the row as a whole is unusable (a line that is not JSON).
        super().__init__(f"field '{field_name}': {problem}" if field_name else problem)
        self.field_name = field_name


@dataclass
class Prompt:
    prompt: str  # the question text, before any chat template
    ground_truth: str  # reference answer handed to the verifier
    verifier: str  # name in the verifier registry (rlvr.config.VERIFIERS)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance and dataset extras


def require(row: Mapping[str, Any], name: str, types: tuple[type, ...] = (str,)) -> Any:
    """``row[name]``, checked to be present, of one of ``types`` and (for text) non-empty."""
    if name not in row or row[name] is None:
        raise FieldError(name, "missing")
    value = row[name]
    # bool is an int subclass; a JSON true is never a valid answer or text.
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise FieldError(name, f"expected {expected}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise FieldError(name, "empty")
    return value


def arithmetic_row(row: Mapping[str, Any]) -> Prompt:
    """``{"prompt": "12+7=", "answer": "19"}`` (the form :func:`arithmetic_to_row` writes)."""
    text = require(row, "prompt")
    answer = str(require(row, "answer", (str, int))).strip()
    return Prompt(prompt=text, ground_truth=answer, verifier="arithmetic")


def gsm8k_row(row: Mapping[str, Any]) -> Prompt:
    """GSM8K: ``question``, and the number after ``####`` at the end of ``answer``."""
    question = require(row, "question")
    solution = require(row, "answer")
    if "####" not in solution:
        raise FieldError("answer", "no '####' final-answer marker")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise FieldError("answer", "empty final answer after '####'")
    return Prompt(prompt=question, ground_truth=final, verifier="gsm8k")


def math_row(row: Mapping[str, Any]) -> Prompt:
    """MATH / MATH-500: ``problem``, ``answer``; ``subject``, ``level``, ``unique_id`` go to meta."""
    problem = require(row, "problem")
    answer = str(require(row, "answer", (str, int))).strip()
    meta: dict[str, Any] = {}
    for name, types in (("subject", (str,)), ("level", (int, str)), ("unique_id", (str,))):
        if row.get(name) is not None:
            meta[name] = require(row, name, types)
    return Prompt(prompt=problem, ground_truth=answer, verifier="math", meta=meta)


ADAPTERS: dict[str, Callable[[Mapping[str, Any]], Prompt]] = {
    "arithmetic": arithmetic_row,
    "gsm8k": gsm8k_row,
    "math": math_row,
}


def get_adapter(name: str) -> Callable[[Mapping[str, Any]], Prompt]:
    if name not in ADAPTERS:
        raise DataError(f"unknown dataset adapter '{name}'; valid adapters: {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def arithmetic_to_row(prompt: Prompt) -> dict[str, str]:
    """The file form of a generated arithmetic prompt (read back by :func:`arithmetic_row`)."""
    return {"prompt": prompt.prompt, "answer": prompt.ground_truth}
