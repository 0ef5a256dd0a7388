"""Trainer -> rollout weight sync, once per optimizer step.

Design: one interface, two transports.
* object store (CPU, and any cluster without a shared GPU fabric): trainer
  rank 0 gathers the full state dict from the FSDP shards (a collective every
  rank joins), serialises it once into a few safetensors buckets, and the
  driver hands the *object reference* to every rollout worker: one put, N
  zero-copy reads from Ray's object store, no per-parameter calls.
* NCCL broadcast (GPU): the same tensors are broadcast from trainer rank 0 to
  the engines over a NCCL group, flattened per dtype (``broadcast_buckets``).

On the vLLM side, ``WeightSyncExtension`` is a ``worker_extension_cls``: the CPU
backend repacks linear weights, so it must go through the worker's
``reload_weights(weights_iterator=...)`` rather than ``model.load_weights``.
Every update records a hash of the tensors loaded, which the driver compares
with the trainer's hash of what it sent.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Dict, Iterable, List, Tuple

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def state_dict_hash(items: Iterable[Tuple[str, torch.Tensor]]) -> str:
    """Order-independent digest of named tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(items, key=lambda kv: kv[0]):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def to_buckets(state_dict: Dict[str, torch.Tensor], bucket_bytes: int = 256 << 20) -> List[bytes]:
    """Serialise named tensors into safetensors blobs of at most ~``bucket_bytes`` each (tied tensors,
    which safetensors refuses to store twice, are copied)."""
    buckets: List[bytes] = []
    cur: Dict[str, torch.Tensor] = {}
    size, seen = 0, set()
    for name, t in state_dict.items():
        if t.numel() and t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > bucket_bytes:
            buckets.append(st_save(cur))
            cur, size = {}, 0
        cur[name] = t.contiguous()
        size += nbytes
    if cur:
        buckets.append(st_save(cur))
    return buckets


def from_buckets(buckets: Iterable[bytes]) -> Iterable[Tuple[str, torch.Tensor]]:
    for blob in buckets:
        yield from st_load(blob).items()


class _RotaryCacheFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" on a layerwise reload.

    The rotary layer's only tensor is its cos/sin cache, a buffer computed from the config that
    no checkpoint carries; vLLM then puts its own cache back (``_place_kernel_tensors``), which
    is exactly right, but warns on every reload.  Any other layer failing to load still warns
    (and the hash check would catch missing weights anyway).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage() == "RotaryEmbedding: Failed to load weights")


def _quiet_rotary_reload() -> None:
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _RotaryCacheFilter) for f in log.filters):
        log.addFilter(_RotaryCacheFilter())


class WeightSyncExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); runs inside the engine process."""

    def rlvr_load_buckets(self, buckets: List[bytes]) -> str:
        _quiet_rotary_reload()
        tensors = list(from_buckets(buckets))
        self.model_runner.reload_weights(weights_iterator=iter(tensors))
        self.rlvr_weights_hash = state_dict_hash(tensors)
        return self.rlvr_weights_hash

    def rlvr_weights_hash_loaded(self) -> str:
        return getattr(self, "rlvr_weights_hash", "")


def broadcast_buckets(state_dict: Dict[str, torch.Tensor] | None, names_shapes, group, src: int = 0):
    """GPU transport: broadcast every tensor from ``src`` over a NCCL ``group`` (one call per bucketed
    flat buffer).  Receivers pass ``state_dict=None`` and ``names_shapes`` [(name, shape, dtype)]
    and get the tensors back as an iterator for ``reload_weights``."""
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    for dtype in sorted({d for _, _, d in names_shapes}, key=str):
        group_items = [(n, s) for n, s, d in names_shapes if d == dtype]
        numel = sum(int(torch.Size(s).numel()) for _, s in group_items)
        if state_dict is not None:
            flat = torch.cat([state_dict[n].to(device, dtype).reshape(-1) for n, _ in group_items])
        else:
            flat = torch.empty(numel, dtype=dtype, device=device)
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        for name, shape in group_items:
            n = int(torch.Size(shape).numel())
            yield name, flat[offset: offset + n].view(shape)
            offset += n
