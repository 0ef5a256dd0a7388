"""Turning ragged rollouts into trainer micro-batches.

Design: the driver plans every micro-batch before anything reaches a trainer, so
(1) every data-parallel rank runs the same number of micro-batches (FSDP's
collectives never deadlock on an uneven split), (2) the trainer stays
algorithm-blind: it receives tensors, never samples, rewards or groups.

A micro-batch has one of two layouts behind one interface (``TrainerConfig.packing``):

* *packed* (:func:`pack`, the default): its sequences are concatenated into one
  ``[1, S]`` row, with ``position_ids`` restarting at 0 for each sequence and no
  attention mask; transformers derives the block-diagonal causal mask (sdpa,
  eager) or the ``cu_seqlens`` of varlen flash-attention from those position
  ids, so no padding token is ever computed;
* *padded* (:func:`pad`): one right-padded row per sequence, ``[n, T_max]``,
  with an ``attention_mask``; it computes ``n * T_max`` tokens, and the planner
  charges it that much against the token budget.

Either way the model's outputs are flattened to ``[S]`` (``S = input_ids.numel()``),
per-response tensors (``old_logprob``, ``advantages``, ``token_weight``…) stay
in a padded ``[n, T]`` layout for the losses, and ``gather_index`` maps each
``[n, T]`` slot to its position in the flattened output, so the trainer runs
one code path for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import torch

from rlvr.rollout.sample import Sample


@dataclass
class MicroBatch:
    """Packed (``[1, S]``) or padded (``[n, T_max]``) sequences plus per-response tensors in ``[n, T]`` layout."""

    input_ids: torch.Tensor  # [1, S] packed or [n, T_max] padded prompt+response tokens (last token of each dropped)
    position_ids: torch.Tensor  # same shape; restarting at 0 for each sequence
    targets: torch.Tensor  # [input_ids.numel()] next token at each (flattened) position; 0 at padding
    gather_index: torch.Tensor  # [n, T] flattened position of the prediction of response token t of sequence i
    token_mask: torch.Tensor  # [n, T] bool, valid response tokens
    sample_index: List[int]  # which batch rows these n sequences are
    fields: Dict[str, torch.Tensor] = field(default_factory=dict)  # old_logprob, advantages, token_weight, ...
    attention_mask: Optional[torch.Tensor] = None  # [n, T_max] 1 = real token (padded layout); None when packed

    @property
    def packed(self) -> bool:
        return self.attention_mask is None

    @property
    def num_tokens(self) -> int:
        """Token positions the model computes (padding included)."""
        return self.input_ids.numel()

    def with_fields(self, **tensors: torch.Tensor) -> "MicroBatch":
        rows = torch.tensor(self.sample_index)
        T = self.token_mask.shape[1]
        sliced = {k: v[rows, :T] for k, v in tensors.items()}
        return replace(self, fields={**self.fields, **sliced})


def pad_responses(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids ``[N, T]`` and the valid-token mask."""
    T = max(1, max(len(s.response_ids) for s in samples))
    ids = torch.zeros(len(samples), T, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.bool)
    for i, s in enumerate(samples):
        ids[i, : len(s.response_ids)] = torch.tensor(s.response_ids, dtype=torch.long)
        mask[i, : len(s.response_ids)] = True
    return ids, mask


def pad_values(rows: Sequence[Sequence[float]], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.float32)
    return out


def pack(samples: Sequence[Sample], sample_index: Sequence[int]) -> MicroBatch:
    """Pack ``samples[i] for i in sample_index`` into one micro-batch."""
    chosen = [samples[i] for i in sample_index]
    T = max(1, max(len(s.response_ids) for s in chosen))
    ids, pos, tgt = [], [], []
    gather = torch.zeros(len(chosen), T, dtype=torch.long)
    mask = torch.zeros(len(chosen), T, dtype=torch.bool)
    offset = 0
    for row, s in enumerate(chosen):
        seq = list(s.prompt_ids) + list(s.response_ids)
        ids += seq[:-1]
        tgt += seq[1:]
        pos += range(len(seq) - 1)
        n_resp = len(s.response_ids)
        # the logit predicting response token t sits at packed position offset + len(prompt) - 1 + t
        start = offset + len(s.prompt_ids) - 1
        gather[row, :n_resp] = torch.arange(start, start + n_resp)
        mask[row, :n_resp] = True
        offset += len(seq) - 1
    return MicroBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        targets=torch.tensor(tgt, dtype=torch.long),
        gather_index=gather,
        token_mask=mask,
        sample_index=list(sample_index),
    )


def pad(samples: Sequence[Sample], sample_index: Sequence[int]) -> MicroBatch:
    """``samples[i] for i in sample_index`` as right-padded rows ``[n, T_max]`` with an attention mask."""
    chosen = [samples[i] for i in sample_index]
    seqs = [list(s.prompt_ids) + list(s.response_ids) for s in chosen]
    width = max(len(seq) - 1 for seq in seqs)
    T = max(1, max(len(s.response_ids) for s in chosen))
    ids = torch.zeros(len(chosen), width, dtype=torch.long)  # pad id 0: never attended to, never gathered
    tgt = torch.zeros(len(chosen), width, dtype=torch.long)
    attn = torch.zeros(len(chosen), width, dtype=torch.long)
    gather = torch.zeros(len(chosen), T, dtype=torch.long)
    mask = torch.zeros(len(chosen), T, dtype=torch.bool)
    for row, (s, seq) in enumerate(zip(chosen, seqs)):
        n_in = len(seq) - 1
        ids[row, :n_in] = torch.tensor(seq[:-1])
        tgt[row, :n_in] = torch.tensor(seq[1:])
        attn[row, :n_in] = 1
        n_resp = len(s.response_ids)
        start = row * width + len(s.prompt_ids) - 1
        gather[row, :n_resp] = torch.arange(start, start + n_resp)
        mask[row, :n_resp] = True
    return MicroBatch(
        input_ids=ids,
        position_ids=torch.arange(width).expand(len(chosen), width).clone(),  # monotonic: no packing detected
        targets=tgt.reshape(-1),
        gather_index=gather,
        token_mask=mask,
        sample_index=list(sample_index),
        attention_mask=attn,
    )


def build_micro_batch(samples: Sequence[Sample], sample_index: Sequence[int], packing: bool = True) -> MicroBatch:
    """:func:`pack` or :func:`pad`, as ``TrainerConfig.packing`` says."""
    return pack(samples, sample_index) if packing else pad(samples, sample_index)


def micro_batch_tokens(lengths: Sequence[int], packing: bool) -> int:
    """Token positions a micro-batch of sequences with these input lengths computes."""
    return sum(lengths) if packing else len(lengths) * max(lengths, default=0)


def contributing_samples(index: Sequence[int], contributes: Sequence[bool], group: Sequence[int],
                         num_ranks: int) -> List[int]:
    """The samples of ``index`` worth a forward/backward: whole groups holding a sample that ``contributes``.

    A group whose every token has advantage x token_weight = 0 (a zero-variance GRPO group) adds
    exactly zero to a policy-gradient loss whose denominator is fixed beforehand, so leaving it out
    changes no gradient.  Such groups are added back, first to last, only until the count splits
    evenly over ``num_ranks`` with at least one sample per rank (every FSDP rank must join every
    collective, and an all-zero step must still step AdamW with zero gradients); if that cannot be
    reached, ``index`` is returned whole.
    """
    by_group: Dict[int, List[int]] = {}
    for i in index:
        by_group.setdefault(group[i], []).append(i)
    keep = [g for g, rows in by_group.items() if any(contributes[i] for i in rows)]
    informative = set(keep)
    spare = [g for g in by_group if g not in informative]
    count = sum(len(by_group[g]) for g in keep)
    while (count % num_ranks or count < num_ranks) and spare:
        g = spare.pop(0)
        keep.append(g)
        count += len(by_group[g])
    if count % num_ranks or count < num_ranks:
        return list(index)
    kept = set(keep)
    return [i for i in index if group[i] in kept]


def plan_micro_batches(
    samples: Sequence[Sample], num_ranks: int, token_budget: int, indices: Optional[Sequence[int]] = None,
    packing: bool = True,
) -> List[List[List[int]]]:
    """Split sample indices over ranks, then into micro-batches under ``token_budget``.

    The budget counts computed token positions (:func:`micro_batch_tokens`): the
    sum of lengths when packed, ``n * T_max`` when padded.  A sample longer
    than the budget gets a micro-batch of its own.

    Returns ``plan[rank][micro] -> sample indices``; every rank gets the same number
    of micro-batches (a rank may get an empty one only if it has fewer samples than
    another rank has micro-batches, which the even split below prevents).
    Samples are dealt round-robin by decreasing length so ranks get similar token counts.
    """
    indices = list(range(len(samples))) if indices is None else list(indices)
    if len(indices) % num_ranks:
        raise ValueError(f"{len(indices)} samples do not split evenly over {num_ranks} trainer ranks")
    order = sorted(indices, key=lambda i: -samples[i].num_tokens)
    per_rank = [order[r::num_ranks] for r in range(num_ranks)]
    plans = [_greedy_pack(samples, rank_idx, token_budget, packing) for rank_idx in per_rank]
    n_micro = max(len(p) for p in plans)
    # equalise the count: split the largest micro-batch of short ranks until counts match
    for p in plans:
        while len(p) < n_micro:
            big = max(range(len(p)), key=lambda j: len(p[j]))
            if len(p[big]) < 2:
                raise ValueError("cannot give every trainer rank the same number of micro-batches; "
                                 "raise trainer.micro_batch_tokens")
            half = len(p[big]) // 2
            p[big:big + 1] = [p[big][:half], p[big][half:]]
    return plans


def _greedy_pack(samples: Sequence[Sample], idx: Sequence[int], budget: int, packing: bool) -> List[List[int]]:
    out: List[List[int]] = []
    cur: List[int] = []
    lengths: List[int] = []
    for i in idx:
        n = samples[i].num_tokens - 1
        if cur and micro_batch_tokens(lengths + [n], packing) > budget:
            out.append(cur)
            cur, lengths = [], []
        cur.append(i)
        lengths.append(n)
    if cur:
        out.append(cur)
    return out
