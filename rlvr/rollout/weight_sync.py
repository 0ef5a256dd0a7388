"""Trainer -> rollout weight sync, once per optimizer step: buckets, hashes and the engine side.

Design: two transports behind one protocol (:mod:`rlvr.rollout.transport`, ``weight_sync.transport``).
* object store (the default; CPU, and any cluster without a shared GPU fabric): trainer
  rank 0 gathers the full state dict from the FSDP shards (a collective every
  rank joins), serialises it once into a few safetensors buckets (``to_buckets``), and the
  driver hands the *object reference* to every rollout worker: one put, N
  zero-copy reads from Ray's object store, no per-parameter calls.
* collective: the same tensors, cast to the engines' dtype and packed into uint8 buckets, are
  broadcast from trainer rank 0 over a stateless gloo/NCCL group (``rlvr_open_group`` /
  ``rlvr_receive`` below) and loaded as they arrive.

On the vLLM side, ``WeightSyncExtension`` is a ``worker_extension_cls``: the CPU
backend repacks linear weights, so it must go through the worker's
``reload_weights(weights_iterator=...)`` rather than ``model.load_weights``.
Every update records a hash of the tensors loaded (one digest per tensor, so a stream can be
hashed as it goes), which the driver compares with the trainer's hash of what it sent.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Dict, Iterable, List, Tuple

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rlvr.rollout.vllm_logs import drop_message


def tensor_digest(name: str, t: torch.Tensor) -> bytes:
    """Digest of one named tensor: name, dtype, shape and bytes."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def combine_digests(digests: Dict[str, bytes]) -> str:
    """Order-independent hash of per-tensor digests."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(digests[name])
    return h.hexdigest()[:16]


def state_dict_hash(items: Iterable[Tuple[str, torch.Tensor]]) -> str:
    """Order-independent digest of named tensors (names, dtypes, shapes and bytes)."""
    return combine_digests({name: tensor_digest(name, t) for name, t in items})


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


def _quiet_rotary_reload() -> None:
    """Drop vLLM's "RotaryEmbedding: Failed to load weights" on a layerwise reload.

    The rotary layer's only tensor is its cos/sin cache, a buffer computed from the config that
    no checkpoint carries; vLLM then puts its own cache back (``_place_kernel_tensors``), which
    is exactly right, but warns on every reload.  Any other layer failing to load still warns
    (and the hash check would catch missing weights anyway).
    """
    drop_message("vllm.model_executor.model_loader.reload.layerwise", "RotaryEmbedding: Failed to load weights")


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

    def rlvr_open_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                        timeout_s: float) -> int:
        """Join the trainer's weight group as rank ``rank_offset`` + this worker's tensor-parallel rank."""
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        from rlvr.rollout.collective import WeightGroup

        self.rlvr_close_group()
        rank = rank_offset + get_tensor_model_parallel_rank()
        self.rlvr_group = WeightGroup(host, port, rank, world_size, backend, timeout_s)
        return rank

    def rlvr_close_group(self) -> None:
        group = getattr(self, "rlvr_group", None)
        if group is not None:
            group.close()
            self.rlvr_group = None

    def rlvr_receive(self, plan) -> Dict[str, Any]:
        """Receive rank 0's buckets (``plan``: the slots of each) straight into ``reload_weights``;
        returns the hash of what was loaded and the seconds spent receiving and loading."""
        _quiet_rotary_reload()
        group, digests, timer, failed = self.rlvr_group, {}, {"transfer_s": 0.0}, []

        def weights():
            try:
                for name, t in group.receive(plan, timer):
                    digests[name] = tensor_digest(name, t)
                    yield name, t
            except RuntimeError as exc:  # timeout or a dead peer: end the reload cleanly, so layers that got
                failed.append(exc)  # nothing keep their weights instead of being left on the meta device

        t0 = time.perf_counter()
        self.model_runner.reload_weights(weights_iterator=weights())
        self.rlvr_weights_hash = "" if failed else combine_digests(digests)  # "": matches no sent hash
        if failed:
            raise failed[0]
        total = time.perf_counter() - t0
        return {"hash": self.rlvr_weights_hash, "transfer_s": timer["transfer_s"],
                "load_s": total - timer["transfer_s"]}
