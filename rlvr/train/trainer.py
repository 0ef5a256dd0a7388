"""The algorithm-blind trainer: forward/backward on the tensors it is given.

Design: advantages, ``token_weight`` and the loss denominators are computed by
the driver before anything reaches here, so a new algorithm never touches
this file or the sharded processes.  The trainer only (1) recomputes ``old_logprob`` and entropy
when the driver needs them before the update (entropy-ranked credit, several
updates per batch; on-policy otherwise, ``old_logprob = logprob.detach()`` as in
TRL and verl, saving one forward pass per step),
and, with a KL term (``kl_coef > 0``), the frozen reference policy's
log-probs in the same no-grad pass (``ref_logprob``; the reference is the
starting checkpoint, sharded like the policy, never updated or synced, no
optimizer; with ``kl_coef = 0`` it is never built),
(2) runs micro-batched forward/backward with gradient accumulation, where each
micro-batch's loss is divided by the *whole batch's* denominator so that the
summed micro-batch gradients — across micro-batches and, via
``world_size``-scaled FSDP averaging, across ranks — equal the full-batch
gradient exactly, (3) clips the global grad norm and steps AdamW.

This class is plain Python over torch; ``workers/trainer.py`` is the Ray shell.
It runs unsharded (``mesh=None``) in tests and in the 1-process reference.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from rlvr.algo.losses import POLICY_LOSSES, LossInputs
from rlvr.train.batching import MicroBatch
from rlvr.config import LossConfig, TrainerConfig
from rlvr.train.parallel import gather_full_state_dict, parallelize
from rlvr.train.policy import PolicyModel, check_attn_implementation, load_hf_model


POLICY_SUMS = ("tokens", "entropy", "targeted", "entropy_targeted", "rollout_tokens", "logprob_mismatch")


def policy_sums(logprob: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                fields: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Sums behind the policy metrics of one micro-batch, in :data:`POLICY_SUMS` order (float64, CPU).

    ``targeted`` (the credit selection) and ``rollout_logprob`` (the engine's) are optional fields.
    """
    m = mask.to(torch.float64)
    ent = entropy.to(torch.float64) * m
    targeted = fields.get("targeted", torch.zeros_like(m)).to(torch.float64) * m
    rollout_tokens, gap = m.new_zeros(()), m.new_zeros(())
    if "rollout_logprob" in fields:
        rollout_tokens = m.sum()
        gap = ((fields["rollout_logprob"].to(torch.float64) - logprob.to(torch.float64)).abs() * m).sum()
    sums = [m.sum(), ent.sum(), targeted.sum(), (ent * targeted).sum(), rollout_tokens, gap]
    return torch.stack(sums).cpu()


def policy_metrics(sums: Dict[str, float]) -> Dict[str, float]:
    """Token means from summed :data:`POLICY_SUMS`: entropy over all and over targeted tokens, and the mean
    |rollout - trainer| log-prob gap (train/inference mismatch), over the tokens this step trained (with
    ``trainer.skip_zero_advantage``, zero-variance groups are not among them); a metric whose field was
    absent is left out."""
    out = {"policy/entropy": sums["entropy"] / max(sums["tokens"], 1.0)}
    if sums["targeted"]:
        out["policy/entropy_targeted"] = sums["entropy_targeted"] / sums["targeted"]
    if sums["rollout_tokens"]:
        out["rollout/logprob_mismatch"] = sums["logprob_mismatch"] / sums["rollout_tokens"]
    return out


def frozen_reference(hf_model: torch.nn.Module, cfg: TrainerConfig, mesh, device: torch.device) -> torch.nn.Module:
    """The reference policy of the KL term: wrapped and sharded exactly like the policy (same ``parallelize``,
    so before the first update its log-probs are the policy's; bit for bit on CPU), in eval mode, without
    gradients, outside the optimizer and the checkpoints."""
    reference = parallelize(PolicyModel(hf_model, chunk=cfg.logprob_chunk).to(device), mesh, cfg)
    return reference.requires_grad_(False).eval()


class Trainer:
    def __init__(self, model_path: str, cfg: TrainerConfig, mesh=None, device: str = "cpu", temperature: float = 1.0,
                 reference: bool = False):
        """``reference``: also hold the frozen reference policy (the checkpoint at ``model_path``), for a KL term."""
        check_attn_implementation(cfg.attn_implementation, torch.device(device), cfg.dtype)
        load_ref = (lambda: load_hf_model(model_path, cfg.attn_implementation)) if reference else None
        self._setup(load_hf_model(model_path, cfg.attn_implementation), cfg, mesh, device, temperature, load_ref)

    @classmethod
    def from_hf_model(cls, hf_model: torch.nn.Module, cfg: TrainerConfig, mesh=None, device: str = "cpu",
                      temperature: float = 1.0, reference: bool = False) -> "Trainer":
        """A trainer around an already built fp32 HF model (benchmarks build random models in code)."""
        check_attn_implementation(cfg.attn_implementation, torch.device(device), cfg.dtype)
        trainer = cls.__new__(cls)
        ref_model = copy.deepcopy(hf_model) if reference else None  # before sharding moves the policy in place
        trainer._setup(hf_model, cfg, mesh, device, temperature, (lambda: ref_model) if reference else None)
        return trainer

    def _setup(self, hf_model: torch.nn.Module, cfg: TrainerConfig, mesh, device: str, temperature: float,
               load_reference: Optional[Callable[[], torch.nn.Module]] = None) -> None:
        self.cfg = cfg
        self.temperature = temperature  # the rollout's sampling temperature: train on the sampled distribution
        self.mesh = mesh
        self.device = torch.device(device)
        self.world_size = mesh.size() if mesh is not None else 1
        policy = PolicyModel(hf_model, chunk=cfg.logprob_chunk)
        self.policy = parallelize(policy.to(self.device), mesh, cfg)
        # loaded after the policy is sharded, so a rank never holds two unsharded copies at once
        self.reference = None if load_reference is None else frozen_reference(load_reference(), cfg, mesh, self.device)
        self.optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        warmup = max(1, cfg.warmup_steps)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.optimizer_steps = 0

    # ------------------------------------------------------------------ forward
    def _forward(self, mb: MicroBatch, model: Optional[torch.nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-response ``[n, T]`` log-prob and entropy of one micro-batch (packed or padded: one path) under
        ``model`` (the policy unless given)."""
        if mb.packed != self.cfg.packing:
            raise ValueError(
                f"got a {'packed' if mb.packed else 'padded'} micro-batch but trainer.packing={self.cfg.packing}; "
                "build it with rlvr.train.batching.build_micro_batch(samples, index, packing=cfg.trainer.packing)"
            )
        attention_mask = None if mb.attention_mask is None else mb.attention_mask.to(self.device)
        logprob, entropy = (model or self.policy)(
            mb.input_ids.to(self.device), mb.position_ids.to(self.device), mb.targets.to(self.device),
            self.temperature, attention_mask,
        )
        idx, mask = mb.gather_index.to(self.device), mb.token_mask.to(self.device)
        return logprob[idx] * mask, entropy[idx] * mask

    @torch.no_grad()
    def compute_stats(self, micro_batches: Sequence[MicroBatch]) -> List[Tuple]:
        """``old_logprob`` and entropy for every response: ``[(sample_index, logprob, entropy)]``, each tuple
        followed by the reference policy's ``ref_logprob`` ``[n, T]`` when this trainer holds one."""
        self.policy.eval()
        out = []
        for mb in micro_batches:
            logprob, entropy = self._forward(mb)
            row = (mb.sample_index, logprob.float().cpu(), entropy.float().cpu())
            if self.reference is not None:
                row += (self._forward(mb, self.reference)[0].float().cpu(),)
            out.append(row)
        return out

    # ------------------------------------------------------------------ update
    def train_step(
        self, mini_batches: Sequence[Sequence[MicroBatch]], loss_cfg: LossConfig, denoms: Sequence[float], norm_len: int
    ) -> Dict[str, float]:
        """One optimizer step per mini-batch; ``denoms[j]`` is mini-batch j's global loss denominator."""
        self.policy.train()
        start = time.perf_counter()
        metrics: Dict[str, float] = {}
        for micro_batches, denom in zip(mini_batches, denoms):
            step_metrics = self._accumulate(micro_batches, loss_cfg, denom, norm_len)
            step_metrics["train/grad_norm"] = self.optim_step()
            for k, v in step_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v / len(mini_batches)
        metrics["train/lr"] = self.lr_scheduler.get_last_lr()[0]
        # inside this rank, collectives included; the driver's time/train adds transport and the actor call
        metrics["time/train_compute"] = time.perf_counter() - start
        return metrics

    def _accumulate(self, micro_batches, loss_cfg: LossConfig, denom: float, norm_len: int) -> Dict[str, float]:
        """Forward/backward every micro-batch; metrics are token-weighted means over all ranks."""
        names: List[str] = []
        sums: List[float] = []
        loss_total, weight_total, policy = 0.0, 0.0, torch.zeros(len(POLICY_SUMS), dtype=torch.float64)
        for mb in micro_batches:
            loss, loss_metrics, mb_sums = self.forward_loss(mb, loss_cfg, denom, norm_len)
            self.backward(loss)
            w = float(mb.fields["token_weight"].sum())
            if not names:
                names, sums = sorted(loss_metrics), [0.0] * len(loss_metrics)
            sums = [acc + loss_metrics[k] * w for acc, k in zip(sums, names)]
            loss_total += float(loss.detach())
            weight_total += w
            policy += mb_sums
        totals = torch.cat([torch.tensor([loss_total, weight_total, *sums], dtype=torch.float64), policy])
        if self.mesh is not None:
            totals = totals.to(self.device)
            dist.all_reduce(totals)
        loss_total, weight_total, *sums = totals[: -len(POLICY_SUMS)].tolist()
        out = {f"loss/{k}": v / max(weight_total, 1e-12) for k, v in zip(names, sums)}
        out["train/loss"] = loss_total
        return {**out, **policy_metrics(dict(zip(POLICY_SUMS, totals[-len(POLICY_SUMS):].tolist())))}

    def forward_loss(self, mb: MicroBatch, loss_cfg: LossConfig, denom: float,
                     norm_len: int) -> Tuple[torch.Tensor, Dict[str, float], torch.Tensor]:
        """One micro-batch's part of the mini-batch loss (divided by the whole mini-batch's ``denom``), its loss
        metrics and its :data:`POLICY_SUMS`.  Without an ``old_logprob`` field the update is on-policy:
        ``old_logprob = logprob.detach()`` (ratio exactly 1), which saves the separate stats forward."""
        logprob, entropy = self._forward(mb)
        f = {k: v.to(self.device) for k, v in mb.fields.items()}
        mask = mb.token_mask.to(self.device)
        inputs = LossInputs(
            logprob=logprob, old_logprob=f["old_logprob"] if "old_logprob" in f else logprob.detach(),
            advantages=f["advantages"], token_weight=f["token_weight"], token_mask=mask,
            ref_logprob=f.get("ref_logprob"), norm_len=norm_len, denom=denom,
        )
        loss, metrics = POLICY_LOSSES.get(loss_cfg.name)(inputs, loss_cfg)
        return loss, metrics, policy_sums(logprob.detach(), entropy.detach(), mask, f)

    def backward(self, loss: torch.Tensor) -> None:
        # FSDP averages gradients over ranks; each rank's loss is a partial sum of the global loss
        (loss * self.world_size).backward()

    def optim_step(self) -> float:
        """Clip the global grad norm, step AdamW and the LR schedule; returns the pre-clip norm."""
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return float(norm)

    # ------------------------------------------------------------------ weights
    def full_state_dict(self) -> Optional[Dict[str, torch.Tensor]]:
        """The unsharded HF-named float32 weights on CPU (a collective: every rank must call it); None off rank 0."""
        sd = self.policy.state_dict() if self.mesh is None else gather_full_state_dict(self.policy)
        if sd is None:
            return None
        return {self.policy_key(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}

    @staticmethod
    def policy_key(key: str) -> str:
        return key[len("hf."):] if key.startswith("hf.") else key

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        """Sharded model + optimizer (torch.distributed.checkpoint) plus this rank's scheduler and RNG."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.policy, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, "trainer"))
        torch.save(self._local_state(), os.path.join(path, f"trainer_rank{self._rank()}.pt"))

    def load(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.policy, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=os.path.join(path, "trainer"))
        set_state_dict(self.policy, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        local = torch.load(os.path.join(path, f"trainer_rank{self._rank()}.pt"), weights_only=False)
        self.lr_scheduler.load_state_dict(local["lr_scheduler"])
        self.optimizer_steps = local["optimizer_steps"]
        torch.set_rng_state(local["rng"])

    def _local_state(self) -> dict:
        return {"lr_scheduler": self.lr_scheduler.state_dict(), "optimizer_steps": self.optimizer_steps,
                "rng": torch.get_rng_state()}

    def _rank(self) -> int:
        return dist.get_rank() if self.mesh is not None else 0
