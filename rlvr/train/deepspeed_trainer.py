"""DeepSpeed ZeRO as the second trainer engine (``trainer.engine=deepspeed``).

Design: :class:`DeepSpeedTrainer` subclasses the FSDP2 :class:`rlvr.train.trainer.Trainer` and
replaces only what the engine owns -- wrapping, backward, the optimizer step, the weight export
and the checkpoint -- so the forward, the chunked log-prob/entropy head, the loss path
(:mod:`rlvr.algo.losses` through ``Trainer.forward_loss``), the metrics and the loss denominators
are the same code.  ZeRO (Rajbhandari et al., arXiv 1910.02054) shards optimizer state (stage 1),
gradients (2) and parameters (3) over the same data-parallel ranks FSDP2 uses.

* Process group: rlvr joins it (:func:`rlvr.train.parallel.init_distributed`); DeepSpeed's comm
  layer wraps that group (``dist_init_required=False``) instead of making its own.  The
  shared-memory all-reduce op DeepSpeed compiles for CPU at that point (~40-60 s with g++, a
  crash without a compiler) serves only AutoTP inference, so it is not built.
* Gradient accumulation: ``managed_gradient_accumulation=false`` -- ``engine.step()`` is the
  boundary, so a mini-batch may have any number of micro-batches.  As with FSDP2, each
  micro-batch's loss is divided by the whole mini-batch's denominator and multiplied by the
  world size (DeepSpeed averages gradients over ranks).  DeepSpeed clips with torch's formula
  (``max_norm / (norm + 1e-6)``) and reports the pre-clip global norm.
* Precision: ``trainer.dtype=bfloat16`` is DeepSpeed's bf16 mode (bf16 parameters for compute,
  fp32 master weights in the optimizer, fp32 gradient reduction); float32 is plain fp32.
* Optimizer: AdamW with ``trainer.lr/betas/weight_decay`` from :data:`OPTIMIZERS`; LR warm-up as
  in the FSDP2 trainer, stepped by the engine.
* Weights: ``full_state_dict`` is the module's parameters as the forward sees them (ZeRO-3:
  gathered module by module onto rank 0), as float32.  With bf16 these are the bf16 compute
  weights (what a bf16 engine gets from FSDP2 too; FSDP2 exports its fp32 masters); the fp32
  master weights are in the checkpoint.
* Checkpoints: DeepSpeed's own files in ``<path>/trainer/`` (tag ``ds``) plus the rank's
  scheduler/RNG file, as for FSDP2; :func:`hf_state_dict` turns them into HF-named fp32 weights
  offline (DeepSpeed's ``zero_to_fp32``), for :func:`rlvr.loop.checkpoint.consolidate`.
* KL reference: a frozen copy; under ZeRO-3 wrapped by a DeepSpeed engine without an optimizer
  (partitioned like the policy), under ZeRO-1/2 the plain module (their parameters are replicated).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Any, Callable, Dict, Iterator, Optional

import torch
import torch.distributed as dist

from rlvr.config import TrainerConfig
from rlvr.registry import Registry
from rlvr.train.policy import PolicyModel
from rlvr.train.trainer import Trainer

CHECKPOINT_DIR, TAG = "trainer", "ds"

# DeepSpeed's ZeRO code calls collectives torch 2.13 deprecates (all_gather_into_tensor, ...): one
# FutureWarning per call otherwise, several per step and rank
_STEP_WARNINGS = (r"`torch\.distributed\.\w+` is deprecated",)


def _adamw_kwargs(cfg: TrainerConfig) -> Dict[str, Any]:
    return {"lr": cfg.lr, "betas": tuple(cfg.betas), "weight_decay": cfg.weight_decay}


def _torch_adamw(cfg: TrainerConfig) -> Callable:
    return lambda params: torch.optim.AdamW(params, **_adamw_kwargs(cfg))


def _say_compiling(op: str) -> None:
    """The first start builds DeepSpeed's C++/CUDA op; say so, and where it is cached."""
    cache = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/torch_extensions"))
    if not any(op in d for _, dirs, _ in os.walk(cache) for d in dirs):
        print(f"[rlvr] building DeepSpeed's {op} op (first start only, 1-2 min; needs a C++ compiler; "
              f"cached in {cache})", flush=True)


def _cpu_adam(cfg: TrainerConfig) -> Callable:
    _say_compiling("cpu_adam")
    from deepspeed.ops.adam import DeepSpeedCPUAdam  # compiles its C++ op on first use

    return lambda params: DeepSpeedCPUAdam(params, adamw_mode=True, **_adamw_kwargs(cfg))


def _fused_adam(cfg: TrainerConfig) -> Callable:
    _say_compiling("fused_adam")
    from deepspeed.ops.adam import FusedAdam  # compiles its op on first use

    return lambda params: FusedAdam(params, adam_w_mode=True, **_adamw_kwargs(cfg))


OPTIMIZERS: Registry[Callable[[TrainerConfig], Callable]] = Registry(
    "trainer.deepspeed.optimizer",
    {"torch_adamw": _torch_adamw, "cpu_adam": _cpu_adam, "fused_adam": _fused_adam})


def ds_config(cfg: TrainerConfig) -> Dict[str, Any]:
    """The DeepSpeed config of ``cfg`` (``trainer`` section; ``trainer.deepspeed`` for ZeRO and offload)."""
    ds = cfg.deepspeed
    zero: Dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer}
    if ds.offload_params != "none":
        zero["offload_param"] = {"device": ds.offload_params}
    return {
        "train_micro_batch_size_per_gpu": 1,  # unused: rlvr plans the micro-batches
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,  # step() is the boundary, after any number of backwards
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "communication_data_type": "fp32",  # reduce gradients in fp32, like FSDP2's reduce_dtype
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def import_deepspeed():
    """``import deepspeed`` without its side effects on this process: it sets
    ``PYTORCH_NVML_BASED_CUDA_CHECK`` and logs INFO lines to stdout; only its warnings are kept."""
    saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    import deepspeed

    if saved is None:
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    else:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def join_process_group() -> None:
    """DeepSpeed's comm layer over the process group this rank has joined (a 1-rank gloo group in this
    process when there is none: ``mesh=None``), without building the CPU shared-memory inference op."""
    import importlib
    from unittest import mock

    deepspeed = import_deepspeed()
    ds_torch = importlib.import_module("deepspeed.comm.torch")  # the attribute is torch

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    # the engine picks its device by LOCAL_RANK; parallel.init_distributed has already set this rank's device
    local = torch.cuda.current_device() if dist.get_backend() == "nccl" else 0
    os.environ.setdefault("LOCAL_RANK", str(local))
    with mock.patch.object(ds_torch, "build_shm_op", lambda: None):
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)


@contextlib.contextmanager
def quiet_step() -> Iterator[None]:
    """Silence the deprecation warnings DeepSpeed's ZeRO code raises on every step under torch 2.13."""
    with warnings.catch_warnings():
        for message in _STEP_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def _warmup(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps)  # the FSDP2 trainer's linear warm-up
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))


def _register_head(policy: PolicyModel, stage: int) -> None:
    """ZeRO-3 gathers a module's parameters around its own forward; the fused head reads the output
    embedding inside ``PolicyModel.forward``, so that weight is registered with the root."""
    if stage == 3:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        register_external_parameter(policy, policy.hf.get_output_embeddings().weight)


class DeepSpeedTrainer(Trainer):
    """:class:`Trainer`'s interface on a DeepSpeed ZeRO engine (``self.policy`` is the engine)."""

    def _setup(self, hf_model: torch.nn.Module, cfg: TrainerConfig, mesh, device: str, temperature: float,
               load_reference: Optional[Callable[[], torch.nn.Module]] = None) -> None:
        self.cfg, self.temperature, self.mesh = cfg, temperature, mesh
        self.device = torch.device(device)
        join_process_group()
        self.world_size = dist.get_world_size()
        deepspeed = import_deepspeed()
        policy = self._wrap(hf_model)
        with quiet_step():
            self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
                model=policy, model_parameters=list(policy.parameters()), config=ds_config(cfg),
                optimizer=OPTIMIZERS.get(cfg.deepspeed.optimizer)(cfg),
                lr_scheduler=lambda opt: _warmup(opt, cfg.warmup_steps), dist_init_required=False)
        self.policy = self.engine
        self.reference = None if load_reference is None else self._frozen_reference(load_reference())
        self.optimizer_steps = 0

    def _wrap(self, hf_model: torch.nn.Module) -> PolicyModel:
        policy = PolicyModel(hf_model, chunk=self.cfg.logprob_chunk).to(self.device)
        if self.cfg.activation_checkpointing:
            policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        _register_head(policy, self.cfg.deepspeed.zero_stage)
        return policy

    def _frozen_reference(self, hf_model: torch.nn.Module) -> torch.nn.Module:
        """The KL reference in eval mode without gradients, in the policy's compute dtype: under ZeRO-3 an
        engine without optimizer that partitions it like the policy; under ZeRO-1/2 (replicated parameters)
        the module itself."""
        reference = self._wrap(hf_model).requires_grad_(False).eval()
        if self.cfg.deepspeed.zero_stage < 3:
            return reference.to(torch.bfloat16) if self.cfg.dtype == "bfloat16" else reference
        config = {k: v for k, v in ds_config(self.cfg).items() if k != "gradient_clipping"}
        with quiet_step():
            engine = import_deepspeed().initialize(model=reference, config=config,
                                                   dist_init_required=False)[0]
        engine.eval()  # DeepSpeedEngine.eval() returns None
        return engine

    # ------------------------------------------------------------------ update
    def _forward(self, mb, model=None):
        with quiet_step():  # ZeRO-3 gathers parameters in the forward
            return super()._forward(mb, model)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; each rank's loss is a partial sum of the global loss
        with quiet_step():
            self.engine.backward(loss * self.world_size)

    def optim_step(self) -> float:
        """Reduce, clip and step (``engine.step()``: the accumulation boundary); returns the pre-clip norm."""
        with quiet_step():
            self.engine.step()
        self.optimizer_steps += 1
        return float(self.engine.get_global_grad_norm())

    # ------------------------------------------------------------------ weights
    def full_state_dict(self) -> Optional[Dict[str, torch.Tensor]]:
        """The unsharded HF-named float32 weights on CPU (a collective under ZeRO-3); None off rank 0."""
        if self.cfg.deepspeed.zero_stage == 3:
            with quiet_step():
                sd = self.engine._zero3_consolidated_16bit_state_dict()  # module by module, kept on rank 0
        else:
            sd = self.engine.module.state_dict() if self._rank() == 0 else None
        if self._rank() != 0 or sd is None:
            return None
        return {self.policy_key(k): v.detach().to("cpu", torch.float32).clone() for k, v in sd.items()}

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        """DeepSpeed's sharded model, optimizer and scheduler in ``path/trainer``, plus this rank's scheduler
        and RNG."""
        with quiet_step():
            self.engine.save_checkpoint(os.path.join(path, CHECKPOINT_DIR), tag=TAG)
        torch.save(self._local_state(), os.path.join(path, f"trainer_rank{self._rank()}.pt"))

    def load(self, path: str) -> None:
        with quiet_step():
            loaded, _ = self.engine.load_checkpoint(os.path.join(path, CHECKPOINT_DIR), tag=TAG)
        if loaded is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {os.path.join(path, CHECKPOINT_DIR)}")
        local = torch.load(os.path.join(path, f"trainer_rank{self._rank()}.pt"), weights_only=False)
        self.lr_scheduler.load_state_dict(local["lr_scheduler"])
        self.optimizer_steps = local["optimizer_steps"]
        torch.set_rng_state(local["rng"])

    def _rank(self) -> int:
        return dist.get_rank()


# --------------------------------------------------------------------------- offline conversion
def is_checkpoint(path: str) -> bool:
    """Whether the run checkpoint ``path`` holds DeepSpeed trainer state (rather than FSDP2's DCP)."""
    return os.path.isdir(os.path.join(path, CHECKPOINT_DIR, TAG))


def hf_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """HF-named float32 weights of the run checkpoint ``path`` (fp32 master weights, every ZeRO stage), read
    offline on CPU with DeepSpeed's ``zero_to_fp32``; for :func:`rlvr.loop.checkpoint.consolidate`."""
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with quiet_step(), contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        sd = get_fp32_state_dict_from_zero_checkpoint(os.path.join(path, CHECKPOINT_DIR), tag=TAG)
    return {Trainer.policy_key(k): v.float() for k, v in sd.items()}
