"""The policy as the trainer sees it: tokens in, per-token log-prob and entropy out.

Design: ``PolicyModel`` wraps any HF causal LM (the tiny CPU Qwen2 or a real
checkpoint) and replaces its logits output with the fused, chunked
log-prob/entropy head of :mod:`rlvr.algo.token_stats`, so the full
``[tokens, vocab]`` logits are never materialised (151,936-entry vocabularies).
Because the head runs inside this module's ``forward``, FSDP2 wrapping the
module as a root unit unshards the head weight for exactly that call; the model
itself knows nothing about sharding (see :mod:`rlvr.parallel`).
"""

from __future__ import annotations

import os
from typing import Tuple

import torch
from torch import nn

from rlvr.algo.token_stats import hidden_logprob_entropy

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


class PolicyModel(nn.Module):
    def __init__(self, hf_model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.hf = hf_model
        self.chunk = chunk

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``input_ids``/``position_ids`` ``[1, S]`` (packed) -> log-prob and entropy ``[S]`` of ``targets``."""
        out = self.hf.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
        weight = self.hf.get_output_embeddings().weight
        return hidden_logprob_entropy(hidden, weight, targets, chunk=self.chunk, temperature=temperature)


def load_hf_model(path: str, attn_implementation: str = "sdpa") -> nn.Module:
    """Load an HF checkpoint directory in float32 (master weights); compute dtype is set by FSDP."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation)
