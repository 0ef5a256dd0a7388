"""The procedurally generated arithmetic task ("12+7=" -> "19").

Design: the prompt space is every ``a+b`` and every ``a-b`` with ``a >= b``
(so no answer is negative), operands in ``[0, max_operand]``.  A fixed hash of
the prompt text puts one prompt in ``HELDOUT_EVERY`` into the *held-out* part;
``heldout=False`` (training) draws only from the rest and ``heldout=True``
(evaluation) only from the held-out part, so a train set and an eval set never
share a prompt, whatever their seeds, and the split does not move when
``max_operand`` grows.  Within its part, a seed fixes the order: the part is
shuffled, and shuffled again for each further pass when ``n`` exceeds its size,
so a set never repeats a prompt before it has used them all.

The verifier is "arithmetic": the response's first integer must equal the
ground truth.  ``GENERATOR_VERSION`` is part of the tiny model's cache key;
bump it whenever the prompt space, format or split changes.
"""

from __future__ import annotations

import hashlib
import operator
import random
from dataclasses import replace

from rlvr.data.adapters import Prompt

GENERATOR_VERSION = 1
OPERATORS = {"+": operator.add, "-": operator.sub}  # "-" only with a >= b: no negative answers
HELDOUT_EVERY = 4  # one prompt in four is held out for evaluation


def is_heldout(text: str) -> bool:
    """Whether ``text`` belongs to the held-out part (fixed by a hash, not by any seed)."""
    digest = hashlib.blake2b(f"v{GENERATOR_VERSION}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_EVERY == 0


def problem_space(max_operand: int) -> list[tuple[int, str, int]]:
    """Every problem ``(a, op, b)`` of the task, in a fixed order."""
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    return [
        (a, op, b)
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        for op in OPERATORS
        if op != "-" or a >= b
    ]


def make_prompt(a: int, op: str, b: int) -> Prompt:
    """The record of one problem; ``meta`` keeps the operands (the warm-start teacher reads them)."""
    text = f"{a}{op}{b}="
    meta = {"a": a, "op": op, "b": b, "heldout": is_heldout(text)}
    return Prompt(prompt=text, ground_truth=str(OPERATORS[op](a, b)), verifier="arithmetic", meta=meta)


def generate_arithmetic(n: int, seed: int, max_operand: int, heldout: bool = False) -> list[Prompt]:
    """``n`` prompts from the training (or held-out) part, in an order fixed by ``seed``."""
    problems = (make_prompt(*problem) for problem in problem_space(max_operand))
    pool = [p for p in problems if p.meta["heldout"] == heldout]
    if not pool and n > 0:
        part = "held-out" if heldout else "training"
        raise ValueError(f"max_operand={max_operand} leaves the {part} part of the arithmetic task empty")
    rng = random.Random(seed)
    out: list[Prompt] = []
    while len(out) < n:
        order = list(pool)
        rng.shuffle(order)
        out.extend(replace(p, meta=dict(p.meta)) for p in order[: n - len(out)])
    return out
