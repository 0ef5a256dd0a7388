"""Per-token log-prob and entropy without a second vocabulary-sized tensor.

With a 150k vocabulary, 8k tokens of logits are 4.9 GB in fp32; autograd
through ``log_softmax`` would keep another tensor of that size per op.  Both
functions here are custom :class:`torch.autograd.Function` s that loop over
row chunks, save only their inputs and two floats per row (the log-normaliser
and the entropy), and recompute each chunk's softmax in backward.  This is the
chunked/fused "linear + cross-entropy" idea of Liger-Kernel (arXiv 2410.10989)
extended with the entropy, which token credit and entropy shaping need.

With z = logits / temperature, p = softmax(z), H = -sum p log p:

    d logprob_y / dz = onehot(y) - p
    d H / dz         = -p * (log p + H)

The softmax runs in fp32 even when the inputs are bf16 (the matmul of the
fused head runs in the input dtype, as Liger does, then is upcast); fp64
inputs stay fp64, so the backward can be gradchecked.
``targets`` must be valid ids in [0, V); the caller masks padding afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Softmax dtype: at least fp32."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_stats(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 logits chunk [c, V] -> (logprob [c], entropy [c], logsumexp [c])."""
    lse = torch.logsumexp(z, dim=-1)
    p = torch.exp(z - lse[:, None])
    entropy = lse - torch.where(p > 0, p * z, 0.0).sum(dim=-1)  # -inf logits (masked ids) add 0
    logprob = z.gather(1, targets[:, None]).squeeze(1) - lse
    return logprob, entropy, lse


def _chunk_grad(z: Tensor, targets: Tensor, lse: Tensor, entropy: Tensor,
                g_logprob: Tensor, g_entropy: Tensor, temperature: float) -> Tensor:
    """d(g_lp . logprob + g_H . entropy) / d(raw logits) for one chunk, fp32 [c, V]."""
    log_p = z - lse[:, None]
    p = torch.exp(log_p)
    # -g_lp * p  +  -g_H * p * (log p + H), then + g_lp at the target column
    grad = -p * (g_logprob[:, None] + g_entropy[:, None] * (log_p + entropy[:, None]))
    grad = torch.where(p > 0, grad, 0.0)  # p = 0 at -inf logits: 0 * -inf would be nan
    grad.scatter_add_(1, targets[:, None], g_logprob[:, None])
    return grad / temperature


class _LogitsLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk: int, temperature: float):
        n, acc = logits.shape[0], _acc(logits.dtype)
        logprob = torch.empty(n, dtype=acc, device=logits.device)
        entropy, lse = torch.empty_like(logprob), torch.empty_like(logprob)
        for s in range(0, n, chunk):
            z = logits[s:s + chunk].to(acc) / temperature
            logprob[s:s + chunk], entropy[s:s + chunk], lse[s:s + chunk] = _chunk_stats(z, targets[s:s + chunk])
        ctx.save_for_backward(logits, targets, lse, entropy)
        ctx.chunk, ctx.temperature = chunk, temperature
        return logprob, entropy

    @staticmethod
    def backward(ctx, g_logprob: Tensor, g_entropy: Tensor):
        logits, targets, lse, entropy = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            e = s + ctx.chunk
            z = logits[s:e].to(lse.dtype) / ctx.temperature
            grad = _chunk_grad(z, targets[s:e], lse[s:e], entropy[s:e], g_logprob[s:e].to(lse.dtype),
                               g_entropy[s:e].to(lse.dtype), ctx.temperature)
            grad_logits[s:e] = grad.to(logits.dtype)
        return grad_logits, None, None, None


class _HiddenLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, temperature: float):
        n, acc = hidden.shape[0], _acc(torch.promote_types(hidden.dtype, weight.dtype))
        logprob = torch.empty(n, dtype=acc, device=hidden.device)
        entropy, lse = torch.empty_like(logprob), torch.empty_like(logprob)
        for s in range(0, n, chunk):
            z = (hidden[s:s + chunk] @ weight.T).to(acc) / temperature
            logprob[s:s + chunk], entropy[s:s + chunk], lse[s:s + chunk] = _chunk_stats(z, targets[s:s + chunk])
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.chunk, ctx.temperature = chunk, temperature
        return logprob, entropy

    @staticmethod
    def backward(ctx, g_logprob: Tensor, g_entropy: Tensor):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden: Tensor | None = torch.empty_like(hidden) if need_h else None
        grad_weight: Tensor | None = torch.zeros(weight.shape, dtype=lse.dtype,
                                                    device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            e = s + ctx.chunk
            h = hidden[s:e]
            z = (h @ weight.T).to(lse.dtype) / ctx.temperature
            grad_z = _chunk_grad(z, targets[s:e], lse[s:e], entropy[s:e], g_logprob[s:e].to(lse.dtype),
                                 g_entropy[s:e].to(lse.dtype), ctx.temperature).to(weight.dtype)
            if need_h:
                grad_hidden[s:e] = grad_z @ weight
            if need_w:
                grad_weight += (grad_z.T @ h).to(lse.dtype)
        if need_w:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def logits_logprob_entropy(logits: Tensor, targets: Tensor, chunk: int = 1024,
                           temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """logits [N, V], targets [N] -> (logprob [N], entropy [N]) in (at least) fp32, chunk by chunk."""
    _check(logits.shape[0], targets, chunk, temperature)
    return _LogitsLogprobEntropy.apply(logits, targets, int(chunk), float(temperature))


def hidden_logprob_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int = 1024,
                           temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Fused LM head: hidden [N, D], weight [V, D], targets [N] -> (logprob [N], entropy [N]).

    Never holds the full [N, V] logits: at most one [chunk, V] block lives at a time.
    """
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden dim {hidden.shape[-1]} != weight dim {weight.shape[-1]}")
    _check(hidden.shape[0], targets, chunk, temperature)
    return _HiddenLogprobEntropy.apply(hidden, weight, targets, int(chunk), float(temperature))


def _check(n: int, targets: Tensor, chunk: int, temperature: float) -> None:
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
    if chunk < 1 or temperature <= 0:
        raise ValueError(f"chunk must be >= 1 and temperature > 0, got chunk={chunk}, temperature={temperature}")
