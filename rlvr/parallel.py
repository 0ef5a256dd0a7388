"""Sharding, kept apart from the model: ``parallelize(model, mesh, cfg)``.

Design (after torchtitan's ``parallelize``): FSDP2 ``fully_shard`` on every
transformer block, then on the root, so each block's parameters are gathered
just before it runs and freed after; the root unit holds embeddings, the final
norm and the fused log-prob head.  bf16 compute with fp32 master weights and
fp32 gradient reduction comes from ``MixedPrecisionPolicy``.  The same code
runs on CPU (gloo) and GPU (NCCL); only the device mesh differs.

Without a mesh (tests, the 1-process reference, a single-GPU benchmark) the
same precision contract is kept by autocast (``PolicyModel.autocast_dtype``):
fp32 parameters, gradients and optimizer state, bf16 matmuls; so ``trainer.dtype``
means the same thing sharded or not.  Activation checkpointing (HF's
non-reentrant ``torch.utils.checkpoint`` around each block) is applied before
sharding, as torchtitan does.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from rlvr.config import TrainerConfig
from rlvr.policy import torch_dtype


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> DeviceMesh:
    """Join the trainers' process group; returns the 1-D data-parallel mesh."""
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = "cuda" if backend == "nccl" else "cpu"
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return init_device_mesh(device, (world_size,), mesh_dim_names=("dp",))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Transformer blocks of an HF causal LM (``model.model.layers`` for Llama/Qwen families)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: cannot find transformer blocks at .model.layers")
    return list(layers)


def parallelize(policy: nn.Module, mesh: Optional[DeviceMesh], cfg: TrainerConfig) -> nn.Module:
    """Shard ``policy`` (a :class:`rlvr.policy.PolicyModel`) with FSDP2; without a mesh, only set its autocast."""
    if cfg.activation_checkpointing:
        policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dtype = torch_dtype(cfg.dtype)
    if mesh is None:
        policy.autocast_dtype = None if dtype == torch.float32 else dtype
        return policy
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(policy.hf):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(policy, mesh=mesh, mp_policy=mp)
    return policy
