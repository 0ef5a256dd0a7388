"""The collective transport's pieces that run inside trainer rank 0 and every engine worker.

Buckets: named tensors of any dtype laid out back to back in one uint8 buffer (each start
16-byte aligned, so a slice views as its dtype without a copy); gloo and NCCL then move plain
bytes, one broadcast per bucket.  ``plan_buckets`` is the layout both ends agree on (it travels
in the Ray call, with names, dtypes and shapes), ``pack_bucket``/``unpack_bucket`` are pure.

``WeightGroup`` is one member of the trainer -> engines group, created statelessly with vLLM's
``stateless_init_torch_distributed_process_group``: it touches neither vLLM's default group nor
the FSDP group, and broadcasts with the group object's own ``broadcast`` (group ranks, not
global ones).  Its ``timeout_s`` bounds the rendezvous and every broadcast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import torch

ALIGN = 16  # bytes: every tensor starts aligned in its bucket, so a uint8 slice views as any dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives in its bucket."""

    name: str
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: Tuple[int, ...]
    offset: int  # bytes from the bucket start
    nbytes: int


def plan_buckets(specs: Sequence[Tuple[str, str, Sequence[int]]], bucket_bytes: int) -> List[List[Slot]]:
    """Lay ``(name, dtype, shape)`` tensors out in buckets of at most ~``bucket_bytes`` (a tensor
    larger than that gets a bucket of its own), in the order given."""
    plan: List[List[Slot]] = [[]]
    offset = 0
    for name, dtype, shape in specs:
        nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=getattr(torch, dtype)).element_size()
        if plan[-1] and offset + nbytes > bucket_bytes:
            plan.append([])
            offset = 0
        plan[-1].append(Slot(name, dtype, tuple(int(s) for s in shape), offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return [b for b in plan if b]


def bucket_nbytes(slots: Sequence[Slot]) -> int:
    return max((s.offset + s.nbytes for s in slots), default=0)


def pack_bucket(tensors: Mapping[str, torch.Tensor], slots: Sequence[Slot], device: Any = "cpu") -> torch.Tensor:
    """One uint8 buffer holding the bytes of every tensor of ``slots`` (dtype and shape as planned)."""
    buffer = torch.zeros(bucket_nbytes(slots), dtype=torch.uint8, device=device)
    for s in slots:
        t = tensors[s.name]
        if dtype_name(t.dtype) != s.dtype or tuple(t.shape) != s.shape:
            raise ValueError(f"{s.name}: planned {s.dtype}{list(s.shape)}, got {dtype_name(t.dtype)}{list(t.shape)}")
        buffer[s.offset: s.offset + s.nbytes] = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return buffer


def unpack_bucket(buffer: torch.Tensor, slots: Sequence[Slot]) -> Iterator[Tuple[str, torch.Tensor]]:
    """The named tensors of a received bucket: views into ``buffer``, no copy."""
    for s in slots:
        yield s.name, buffer[s.offset: s.offset + s.nbytes].view(getattr(torch, s.dtype)).view(s.shape)



# --------------------------------------------------------------------------- one member of the group
class WeightGroup:
    """This process's end of the trainer -> engines broadcast group (group rank 0 sends)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
        from vllm.distributed.utils import stateless_init_torch_distributed_process_group

        self.rank, self.where = rank, f"{backend} group at {host}:{port}"
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.pg = stateless_init_torch_distributed_process_group(
            host, port, rank, world_size, backend, timeout=timedelta(seconds=timeout_s))

    def broadcast(self, buffer: torch.Tensor) -> None:
        opts = torch.distributed.BroadcastOptions()
        opts.rootRank = 0
        self.pg.broadcast([buffer], opts).wait()

    def send(self, buffers: Sequence[torch.Tensor]) -> float:
        """Broadcast every bucket from rank 0; seconds taken."""
        t0 = time.perf_counter()
        for buffer in buffers:
            self.broadcast(buffer)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def receive(self, plan: Sequence[Sequence[Slot]], timer: Dict[str, float]) -> Iterator[Tuple[str, torch.Tensor]]:
        """Receive bucket by bucket as the consumer asks (a fresh buffer each: the loader may keep views)."""
        for slots in plan:
            buffer = torch.empty(bucket_nbytes(slots), dtype=torch.uint8, device=self.device)
            t0 = time.perf_counter()
            self.broadcast(buffer)
            timer["transfer_s"] = timer.get("transfer_s", 0.0) + time.perf_counter() - t0
            yield from unpack_bucket(buffer, slots)

    def close(self) -> None:
        try:
            self.pg.shutdown()
        except Exception:  # noqa: BLE001 - a broken group (a peer died) may refuse a clean shutdown
            pass
