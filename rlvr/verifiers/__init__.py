"""Verifiers: plain synchronous functions ``(response, ground_truth) -> float`` in a registry.

Design: in RLVR the verifier *is* the reward, and model output is untrusted input.  So every
verifier here is a pure function that never raises on any response and never evaluates model text
as Python; isolation, hard timeouts and memory limits wrap them from outside
(:mod:`rlvr.verifiers.pool`, and the Ray shell ``workers/reward_pool.py``).

- ``arithmetic``  leading integer equals the gold integer (the quickstart task);
- ``gsm8k``       final number (``#### N`` / ``\\boxed{N}`` / last number) equals the gold number;
- ``math``        last ``\\boxed{}`` is equivalent to the MATH gold answer (string -> numeric ->
                  symbolic through a parsed sympy expression).

:func:`compute_reward` adds an optional format reward (the answer is present in the required
form): ``reward = correct + format_weight * well_formed`` (the config calls it an *added* reward).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from rlvr.registry import Registry
from rlvr.verifiers.arithmetic import arithmetic_format, arithmetic_reward
from rlvr.verifiers.gsm8k import gsm8k_format, gsm8k_reward
from rlvr.verifiers.math_answer import math_format, math_reward

Verifier = Callable[[str, str], float]

VERIFIERS: Registry[Verifier] = Registry("verifier", {
    "arithmetic": arithmetic_reward,
    "gsm8k": gsm8k_reward,
    "math": math_reward,
})

# format checks: (response, gsm8k_extract) -> 1.0 when the answer is in the required form
FORMATS: Registry[Callable[[str, str], float]] = Registry("verifier format", {
    "arithmetic": lambda response, _extract: arithmetic_format(response),
    "gsm8k": lambda response, extract: gsm8k_format(response, extract),
    "math": lambda response, _extract: math_format(response),
})


def compute_reward(name: str, response: str, ground_truth: str, format_weight: float = 0.0,
                   gsm8k_extract: str = "auto") -> float:
    """Correctness of ``response`` plus ``format_weight`` times its format check.

    >>> compute_reward("math", r"\\boxed{2}", "2", format_weight=0.1)
    1.1
    >>> compute_reward("gsm8k", "it is 7", "7", format_weight=0.5)  # right number, no '####'/box
    1.0
    """
    verify = VERIFIERS.get(name)
    if name == "gsm8k":  # the one verifier with an option: bind it, keep the registry signature
        verify = partial(gsm8k_reward, extract=gsm8k_extract)
    reward = verify(response, ground_truth)
    if format_weight:
        reward += format_weight * FORMATS.get(name)(response, gsm8k_extract)
    return float(reward)


__all__ = ["FORMATS", "VERIFIERS", "Verifier", "compute_reward"]
