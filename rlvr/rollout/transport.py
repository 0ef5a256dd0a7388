"""Weight transports: how trainer rank 0's weights reach every engine worker after a step.

Design: one small protocol, ``sync(trainers, rollouts) -> SyncResult``, behind the registry
``WEIGHT_TRANSPORTS`` that ``weight_sync.transport`` selects, so ``RLLoop.sync_weights`` stays
three lines and a third transport is one class.

* ``object_store``: rank 0 serialises the full state dict into safetensors buckets once, Ray
  hands the same object to every engine (:mod:`rlvr.rollout.weight_sync`).
* ``collective``: a process group created *statelessly* (vLLM's
  ``stateless_init_torch_distributed_process_group``) between trainer rank 0 (group rank 0) and
  every engine worker (engine i's tensor-parallel worker j is rank ``1 + i * tp + j``); it never
  touches vLLM's own groups or the FSDP group.  Rank 0 casts the gathered tensors to the engines'
  dtype (``stage``), packs them into uint8 buckets of ``bucket_mb`` (:mod:`rlvr.rollout.collective`)
  and broadcasts each bucket with the group object's own ``broadcast``;
  the engines receive lazily inside ``reload_weights(weights_iterator=...)``.  Names, dtypes and
  shapes travel in the Ray call (the bucket plan).  gloo on CPU, NCCL when both pools have GPUs,
  from the same code.  The group init is a rendezvous: every member is called at once through
  non-blocking ``.remote()`` and waited on together.  A restarted engine is loaded through the
  object store (:meth:`RolloutGroup.track_weights`) and the group is rebuilt before the next sync.

Either way every engine hashes what it loaded and rank 0 hashes what it sent, in the dtype sent.
A sync slower than ``timeout_s`` (the group's own timeout and the driver's wait) fails naming
the ranks and the address; it never hangs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from rlvr.config import RLConfig, WeightSyncConfig
from rlvr.registry import Registry
from rlvr.rollout.collective import Slot, dtype_name, pack_bucket, plan_buckets
from rlvr.rollout.weight_sync import state_dict_hash


# --------------------------------------------------------------------------- rank 0
@dataclass
class Staged:
    """Rank 0's packed weights, ready to broadcast."""

    plan: List[List[Slot]]
    buffers: List[torch.Tensor]
    hash: str
    metrics: Dict[str, float]  # gather_s, pack_s, bytes


def stage(state_dict: Mapping[str, torch.Tensor], dtype: str, bucket_bytes: int, device: Any,
          gather_s: float = 0.0) -> Staged:
    """Cast to the engines' ``dtype`` (floating tensors only), plan, pack and hash what will be sent."""
    t0 = time.perf_counter()
    target = getattr(torch, dtype)
    cast = {k: (v.to(device, target) if v.is_floating_point() else v.to(device)) for k, v in state_dict.items()}
    plan = plan_buckets([(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in cast.items()], bucket_bytes)
    buffers = [pack_bucket(cast, slots, device) for slots in plan]
    pack_s = time.perf_counter() - t0
    metrics = {"gather_s": gather_s, "pack_s": pack_s, "bytes": float(sum(b.numel() for b in buffers))}
    return Staged(plan, buffers, state_dict_hash(cast.items()), metrics)


# --------------------------------------------------------------------------- driver side
@dataclass
class SyncResult:
    """What one sync sent (rank 0's hash), what every engine loaded, and its ``sync/...`` metrics."""

    sent_hash: str
    loaded: List[str]
    metrics: Dict[str, float] = field(default_factory=dict)


class WeightTransport:
    """The protocol: built as ``cls(cfg: RLConfig)``, then ``sync(trainers, rollouts)`` once per step."""

    def sync(self, trainers: Any, rollouts: Any) -> SyncResult:
        raise NotImplementedError


class ObjectStoreTransport(WeightTransport):
    """Float32 safetensors buckets through Ray's object store: one put, N zero-copy reads."""

    def __init__(self, cfg: RLConfig):
        self.bucket_bytes = int(cfg.weight_sync.bucket_mb * (1 << 20))

    def sync(self, trainers: Any, rollouts: Any) -> SyncResult:
        t0 = time.perf_counter()
        exported = trainers.export_weights(self.bucket_bytes)
        # Ray hands the engines rank 0's buckets as soon as they exist: no driver round trip in between
        loaded = rollouts.load_weights(exported.buckets)
        sent = exported.hash()
        return SyncResult(sent, loaded, {"sync/total_s": time.perf_counter() - t0})


def _log(msg: str) -> None:
    print(f"[rlvr] {msg}", file=sys.stderr, flush=True)


class EngineDied(RuntimeError):
    """An engine actor died during a collective call (Ray restarts it)."""


def backend_for(cfg: RLConfig) -> str:
    """NCCL when both pools hold GPUs, else gloo (CPU buffers on either side)."""
    return "nccl" if cfg.rollout.num_gpus and cfg.trainer.num_gpus else "gloo"


class CollectiveTransport(WeightTransport):
    """Bucketed broadcast over a stateless group: trainer rank 0 -> every engine worker."""

    def __init__(self, cfg: RLConfig):
        ws: WeightSyncConfig = cfg.weight_sync
        self.bucket_bytes, self.timeout_s = int(ws.bucket_mb * (1 << 20)), ws.timeout_s
        self.dtype, self.backend, self.tp = cfg.rollout.dtype, backend_for(cfg), cfg.rollout.tensor_parallel_size
        self.address: Optional[Tuple[str, int]] = None  # the group's rendezvous; None: (re)build before the next sync
        self.built_for = -1  # ``rollouts.restarts`` when the group was built: a restart means rebuild

    def sync(self, trainers: Any, rollouts: Any) -> SyncResult:
        t0 = time.perf_counter()
        try:
            if self.address is None or self.built_for != rollouts.restarts:
                self.connect(trainers, rollouts)
            t1 = time.perf_counter()
            staged = trainers.stage_weights(self.bucket_bytes, self.dtype, self.backend)  # gather + pack, rank 0
            refs = [trainers.send_weights_async()] + rollouts.receive_weights_async(staged["plan"])
            sent_s, *engines = self.wait(refs, "weight broadcast")
        except EngineDied as exc:
            return self.fallback(trainers, rollouts, str(exc))
        rollouts.track_weights(self.object_store_copy(trainers))  # what a restarted engine loads first
        m = staged["metrics"]
        metrics = {f"sync/{k}": v for k, v in m.items()}
        metrics.update({"sync/connect_s": t1 - t0, "sync/transfer_s": sent_s,
                        "sync/load_s": max(e["load_s"] for e in engines),
                        "sync/bytes_per_s": m["bytes"] / max(sent_s, 1e-9), "sync/total_s": time.perf_counter() - t0})
        return SyncResult(staged["hash"], [e["hash"] for e in engines], metrics)

    def connect(self, trainers: Any, rollouts: Any) -> None:
        """(Re)build the group: trainer rank 0 and every engine join at once (a rendezvous)."""
        self.address = host, port = trainers.weight_group_address()
        world = 1 + len(rollouts) * self.tp
        offsets = [1 + i * self.tp for i in range(len(rollouts))]
        refs = [trainers.open_weight_group_async(host, port, world, self.backend, self.timeout_s)]
        refs += rollouts.open_weight_group_async(host, port, offsets, world, self.backend, self.timeout_s)
        self.wait(refs, "weight group rendezvous")
        self.built_for = rollouts.restarts

    def wait(self, refs: List[Any], what: str) -> List[Any]:
        """Results of calls that run as one collective; a dead engine raises :class:`EngineDied`, anything
        else (a member's error, or no answer within ``timeout_s``) fails naming the ranks and the address."""
        import ray

        labels = ["trainer rank 0 (group rank 0)"] + [
            f"engine {i} (group ranks {1 + i * self.tp}..{(i + 1) * self.tp})" for i in range(len(refs) - 1)]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        where = f"{self.backend} group at {self.address[0]}:{self.address[1]}"
        results, failed = [], []
        for i, (label, ref) in enumerate(zip(labels, refs)):
            if ref not in ready:
                continue
            try:
                results.append(ray.get(ref))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if i > 0:
                    self.address = None
                    raise EngineDied(f"{label} died during the {what} over the {where}") from exc
                failed.append(f"{label}: died")
            except ray.exceptions.RayError as exc:
                failed.append(f"{label}: {str(exc).strip().splitlines()[-1][:300]}")
        if pending or failed:
            self.address = None  # the group is broken: rebuild it before the next sync
            late = [label for label, ref in zip(labels, refs) if ref not in ready]
            raise RuntimeError(f"{what} over the {where} failed"
                               + (f"; no answer within {self.timeout_s:g}s from {', '.join(late)}" if late else "")
                               + (f"; {'; '.join(failed)}" if failed else ""))
        return results

    def fallback(self, trainers: Any, rollouts: Any, why: str) -> SyncResult:
        """This sync through the object store (the rollout group restarts the dead engine); rebuild next time."""
        _log(f"{why}; this sync goes through the object store, the group is rebuilt before the next")
        t0 = time.perf_counter()
        exported = trainers.export_weights(self.bucket_bytes, self.dtype)
        loaded = rollouts.load_weights(exported.buckets)
        return SyncResult(exported.hash(), loaded, {"sync/fallback": 1.0, "sync/total_s": time.perf_counter() - t0})

    def object_store_copy(self, trainers: Any) -> Callable[[], Any]:
        """A lazy object-store export of the weights just broadcast (made at most once, only on a restart)."""
        cache: List[Any] = []

        def copy() -> Any:
            if not cache:
                cache.append(trainers.export_weights(self.bucket_bytes, self.dtype).buckets)
            return cache[0]

        return copy


WEIGHT_TRANSPORTS: Registry[type] = Registry(
    "weight_sync.transport", {"object_store": ObjectStoreTransport, "collective": CollectiveTransport})


def make_transport(cfg: RLConfig) -> WeightTransport:
    return WEIGHT_TRANSPORTS.get(cfg.weight_sync.transport)(cfg)
