"""DAPO soft overlong punishment: a length-aware reward term for over-long responses.

DAPO (Yu et al., arXiv 2503.14476, Sec. 3.4, Eq. 13) adds to the rule-based reward

    R_length(y) = 0                                   |y| <= L_max - L_cache
                = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                = -1                                  L_max < |y|

scaled here by ``penalty`` (verl's ``overlong_buffer.penalty_factor``).  verl's
``verl/workers/reward_manager/dapo.py`` computes the same ramp as
``min(-(L - (L_max - L_cache)) / L_cache * penalty_factor, 0)`` with
``L_max = data.max_response_length``; it never sees L > L_max because the
engine truncates there, so it leaves the ramp unbounded below.  We clamp at
``-penalty`` as the paper's third case says, so ``max_len`` may also sit below
the generation budget.

Design decisions:
  * A pure tensor function of the response lengths; it knows nothing of the
    verifier or the loop.  The caller adds it to the verifier reward of the
    full response, before group advantages (``algorithm.overlong`` in
    :mod:`rlvr.config`; ``max_len: 0`` is off).
  * ``cache = 0`` is allowed and means a hard cut: 0 up to ``max_len``,
    ``-penalty`` beyond (no division by zero).
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(response_length: Tensor, max_len: int, cache: int, penalty: float) -> Tensor:
    """Reward term of DAPO's soft overlong punishment, one value per response.

    Args:
        response_length: [N] response lengths in tokens (int or float; the prompt is not counted).
        max_len: L_max; responses longer than this get ``-penalty``.
        cache: L_cache, width of the linear ramp ending at ``max_len``; 0 <= cache <= max_len.
        penalty: size of the full punishment (DAPO: 1.0), >= 0.

    Returns:
        [N] float32: 0 for L <= max_len - cache, ``-penalty * (L - (max_len - cache)) / cache``
        on (max_len - cache, max_len], ``-penalty`` for L > max_len.  To be *added* to the
        verifier reward of the full response.
    """
    if not 0 <= cache <= max_len:
        raise ValueError(f"overlong_penalty needs 0 <= cache <= max_len, got cache={cache} max_len={max_len}")
    if penalty < 0:
        raise ValueError(f"overlong_penalty needs penalty >= 0, got {penalty}")
    length = response_length.to(torch.float32)
    exceed = length - (max_len - cache)  # tokens into the ramp (<= 0 before it starts)
    ramp = -penalty * exceed / max(cache, 1)  # cache == 0: the ramp is empty, never selected below
    out = torch.where(exceed > 0, ramp, torch.zeros_like(length))
    return torch.where(length > max_len, torch.full_like(length, -penalty), out)
