"""The policy as the trainer sees it: tokens in, per-token log-prob and entropy out.

Design: ``PolicyModel`` wraps any HF causal LM (the tiny CPU Qwen2 or a real
checkpoint) and replaces its logits output with the fused, chunked
log-prob/entropy head of :mod:`rlvr.algo.token_stats`, so the full
``[tokens, vocab]`` logits are never materialised (151,936-entry vocabularies).
Because the head runs inside this module's ``forward``, FSDP2 wrapping the
module as a root unit unshards the head weight for exactly that call; the model
itself knows nothing about sharding (see :mod:`rlvr.train.parallel`).

The forward takes either layout of :class:`rlvr.train.batching.MicroBatch`: a packed
``[1, S]`` row (no attention mask; transformers derives the block-diagonal mask,
or flash-attention's ``cu_seqlens``, from position ids that restart at 0) or
right-padded ``[n, T]`` rows with an attention mask; outputs are flattened.

Mixed precision: under FSDP2 the parameters arrive in the compute dtype
(``MixedPrecisionPolicy``).  Without a mesh, :func:`rlvr.train.parallel.parallelize`
sets ``autocast_dtype`` instead: parameters stay fp32, the backbone runs under
``torch.autocast`` and the fused head is handed bf16 hidden states and weight
-- what FSDP2 would hand it -- so its recomputation in backward sees the same
bf16 logits as its forward.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

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
        self.autocast_dtype: Optional[torch.dtype] = None  # set by parallelize() on the unsharded path

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``input_ids``/``position_ids`` ``[B, T]`` -> log-prob and entropy ``[B*T]`` of ``targets`` ``[B*T]``."""
        dtype = self.autocast_dtype
        with torch.autocast(input_ids.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = self.hf.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                use_cache=False)
        hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
        weight = self.hf.get_output_embeddings().weight
        if dtype is not None:
            hidden, weight = hidden.to(dtype), weight.to(dtype)
        return hidden_logprob_entropy(hidden, weight, targets, chunk=self.chunk, temperature=temperature)


def check_attn_implementation(name: str, device: torch.device, dtype: str) -> None:
    """Fail early, in one line, when ``flash_attention_2`` cannot run here."""
    if name != "flash_attention_2":
        return
    try:
        import flash_attn  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA/ABI mismatch raised at import
        raise ImportError(
            "trainer.attn_implementation=flash_attention_2 needs the flash-attn package, which is not importable "
            f"here ({type(exc).__name__}: {exc}); install it (pip install 'rlvr[gpu]') or use "
            "trainer.attn_implementation=sdpa"
        ) from None
    if device.type != "cuda":
        raise ValueError(f"trainer.attn_implementation=flash_attention_2 runs on CUDA only, not on {device.type}")
    if dtype == "float32":
        raise ValueError("trainer.attn_implementation=flash_attention_2 computes in bf16/fp16: "
                         "set trainer.dtype=bfloat16")


def load_hf_model(path: str, attn_implementation: str = "sdpa") -> nn.Module:
    """Load an HF checkpoint directory in float32 (master weights); compute dtype is set by FSDP."""
    from transformers import AutoModelForCausalLM

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation)
