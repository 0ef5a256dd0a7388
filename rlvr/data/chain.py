"""The generated chain-arithmetic task: a reasoning task long enough for token credit to matter.

The quickstart's answers ("12+7=" -> "19") are two or three tokens, so a *position* schedule has
nothing to schedule over.  Here a prompt chains three or four operands (``CHAIN_TERMS``) and the
solution works it out step by step before the answer, about 20-40 characters (= tokens for the
tiny model's one-token-per-character vocabulary):

    "12+7-3+20="  ->  "12+7=19, 19-3=16, 16+20=36 #### 36"

Design:
* "-" is drawn only when it keeps the running total >= 0, so no intermediate is negative.
* The prompt space is far too big to enumerate, so prompts are drawn at random; a fixed hash of
  the prompt text (never a seed) puts one prompt in ``HELDOUT_EVERY`` into the held-out part, so a
  train set and an eval set never share a prompt, as in :mod:`rlvr.data.arithmetic`.
* The verifier is the existing ``gsm8k`` one: with ``####`` present it reads the number after it,
  else the last number.  The arithmetic verifier reads the *leading* integer, which here is an
  operand, so it cannot be reused.
* :func:`teacher_solution` is the tiny model's warm-start teacher (:mod:`rlvr.train.tiny_model`).
  It is imperfect on purpose, in the way a real policy often is: with probability
  ``1 - complete_share`` it stops one step short and answers the intermediate total.  Greedy
  decoding then mostly stops short (wrong), while samples complete the chain about
  ``complete_share`` of the time, so RL has a visible, learnable behaviour to reinforce -- and the
  token that decides it (", " vs " ####" after the second-to-last step) sits in the middle of the
  response, not at its end.

Measured (``configs/quickstart_reasoning.yaml``: ``complete_share`` = ``warmstart_direct`` = 0.4, operands
0-30, 1500 warm-start steps, 155 s on a loaded 2-core box): held-out greedy accuracy 7.8% (94% of greedy
answers stop short), sampled accuracy at temperature 1 about 27%; 40 TP-Schedule steps raise greedy
held-out accuracy to 79% (BENCHMARKS.md).

``CHAIN_VERSION`` is part of the tiny chain model's cache key; bump it when the format changes.
"""

from __future__ import annotations

import hashlib
import operator
import random
from typing import List, Sequence, Tuple

from rlvr.data.adapters import Prompt

CHAIN_VERSION = 1
CHAIN_TERMS = (3, 4)  # operands per problem
OPERATORS = {"+": operator.add, "-": operator.sub}
HELDOUT_EVERY = 4  # one prompt in four is held out for evaluation
VERIFIER = "gsm8k"  # "#### N" (else the last number) must equal the ground truth


def is_heldout(text: str) -> bool:
    """Whether ``text`` belongs to the held-out part (fixed by a hash of the text, not by any seed)."""
    digest = hashlib.blake2b(f"chain{CHAIN_VERSION}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_EVERY == 0


def draw_problem(rng: random.Random, max_operand: int) -> Tuple[List[int], List[str]]:
    """Operands ``[x0, x1, ...]`` and operators ``[op1, ...]`` with every running total >= 0."""
    terms = [rng.randint(0, max_operand) for _ in range(rng.choice(CHAIN_TERMS))]
    ops, total = [], terms[0]
    for x in terms[1:]:
        op = "-" if x <= total and rng.random() < 0.5 else "+"
        ops.append(op)
        total = OPERATORS[op](total, x)
    return terms, ops


def steps(terms: Sequence[int], ops: Sequence[str]) -> List[str]:
    """The worked steps, ``["12+7=19", "19-3=16", ...]``: each starts from the previous total."""
    out, total = [], terms[0]
    for op, x in zip(ops, terms[1:]):
        new = OPERATORS[op](total, x)
        out.append(f"{total}{op}{x}={new}")
        total = new
    return out


def solution(terms: Sequence[int], ops: Sequence[str], num_steps: int | None = None) -> str:
    """The first ``num_steps`` steps (all by default) and the answer they reach, after ``####``."""
    done = steps(terms, ops)[: num_steps if num_steps is not None else len(ops)]
    return f"{', '.join(done)} #### {done[-1].rsplit('=', 1)[1]}"


def make_prompt(terms: Sequence[int], ops: Sequence[str]) -> Prompt:
    text = str(terms[0]) + "".join(f"{op}{x}" for op, x in zip(ops, terms[1:])) + "="
    answer = steps(terms, ops)[-1].rsplit("=", 1)[1]
    meta = {"terms": list(terms), "ops": list(ops), "heldout": is_heldout(text)}
    return Prompt(prompt=text, ground_truth=answer, verifier=VERIFIER, meta=meta)


def generate_chain(n: int, seed: int, max_operand: int, heldout: bool = False) -> List[Prompt]:
    """``n`` prompts of the training (or held-out) part, drawn in an order fixed by ``seed``.

    Prompts repeat only by chance (the space has ~10^6 training prompts at ``max_operand`` = 30).
    """
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    rng, out = random.Random(seed), []
    while len(out) < n:
        prompt = make_prompt(*draw_problem(rng, max_operand))
        if prompt.meta["heldout"] == heldout:
            out.append(prompt)
    return out


def teacher_solution(prompt: Prompt, complete_share: float, rng: random.Random) -> str:
    """The warm-start teacher: the full solution with probability ``complete_share``, else one step short."""
    terms, ops = prompt.meta["terms"], prompt.meta["ops"]
    if rng.random() < complete_share:
        return solution(terms, ops)
    return solution(terms, ops, num_steps=len(ops) - 1)
