"""The RL step of TP-Schedule (arXiv 2605.25381) across the actor pools.

One step, top to bottom (``RLLoop.step``):
  sample prompts -> generate (vLLM) -> verify the FULL response -> advantages
  -> scheduler broadcasts (step, percentile, decay) -> [old log-probs/entropy,
  only when credit or the entropy-shaped advantage ranks by them, or the batch
  takes several updates]
  -> token credit -> train (FSDP) -> sync weights to the engines.

Design decisions:
* Rewards are computed on the full response text, before any credit masking.
  (The paper's released code scores only the unmasked suffix, which at a 0.99
  threshold cuts the final answer away.)
* The driver computes advantages, ``token_weight`` and the loss denominators;
  trainers never see rewards or groups (algorithm-blind).  The Scheduler actor
  pushes the step's percentile/decay to every trainer, and a trainer refuses to
  train on a step it was not told about.
* Groups whose advantage x token_weight is zero everywhere (zero-variance GRPO
  groups) are left out of the forward/backward after the loss denominator is
  fixed: the gradient is unchanged (``trainer.skip_zero_advantage``; not with a
  KL term).  Unlike DAPO's dynamic sampling this keeps the estimator as it is.
* The step talks to pools (:mod:`rlvr.loop.groups`), never to single actors: a dead
  rollout or reward actor is restarted there, with the latest weights re-sent.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence

import torch

from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.credit import POLICY_STAT_CRITERIA, CreditInputs, compute_token_weight
from rlvr.algo.entropy_adv import shape_advantages
from rlvr.algo.losses import aggregation_denominator
from rlvr.config import AlgorithmConfig, RLConfig
from rlvr.data import encode_prompts
from rlvr.loop.groups import Pools
from rlvr.rollout.engine import EVAL_STREAM, request_seeds
from rlvr.rollout.sample import Sample
from rlvr.train.batching import (build_micro_batch, contributing_samples, pad_responses, pad_values,
                                 plan_micro_batches)

WEIGHT_BUCKET_BYTES = 256 << 20


class RLLoop:
    def __init__(self, cfg: RLConfig, pools: Pools, tokenizer):
        self.cfg, self.pools, self.tokenizer = cfg, pools, tokenizer
        self.times: Dict[str, float] = {}

    def step(self, step: int, prompts: Sequence, more_prompts: Optional[Callable[[], Sequence]] = None
             ) -> Dict[str, float]:
        a = self.cfg.algorithm
        self.times = {}
        t0 = time.perf_counter()
        samples = self.rollout(step, prompts, more_prompts)  # generate + verify (+ DAPO dynamic sampling)
        rewards = torch.tensor([s.reward for s in samples])
        adv_seq, adv_metrics = ADVANTAGES.get(a.advantage)(rewards, a.group_size, a.advantage_eps)
        values = self.pools.scheduler.broadcast()
        _, mask = pad_responses(samples)
        old_logprob = entropy = None
        if needs_policy_stats(self.cfg, values):  # else on-policy: the trainer uses its own forward
            with self.timed("stats"):
                old_logprob, entropy = self.old_stats(samples)
        with self.timed("credit"):
            advantages, token_weight, targeted, credit_metrics = assign_credit(
                a, values, adv_seq, mask, old_logprob, entropy)
        with self.timed("train"):
            fields = {"advantages": advantages, "token_weight": token_weight, "targeted": targeted.float()}
            if old_logprob is not None:
                fields["old_logprob"] = old_logprob
            if self.cfg.rollout.return_logprobs:  # for the train/inference mismatch metric
                fields["rollout_logprob"] = pad_values([s.rollout_logprob for s in samples], mask.shape[1])
            train_metrics = self.train(step, samples, fields)
        with self.timed("sync"):
            self.sync_weights()
        self.pools.scheduler.advance()
        n_tokens = float(mask.sum())
        metrics = {
            "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "train/accuracy": float((rewards >= 1.0).float().mean()),
            "response/length_mean": n_tokens / len(samples),
            "adv/zero_variance_group_frac": adv_metrics.get("zero_variance_group_frac", 0.0),
            "credit/targeted_frac": credit_metrics["targeted_frac"],
            "credit/token_weight_mean": credit_metrics["token_weight_mean"],
            "verifier/failures": float(sum(1 for s in samples if s.reason)),
            **train_metrics,
            **{f"time/{k}": v for k, v in self.times.items()},
        }
        metrics["time/step"] = time.perf_counter() - t0
        metrics["perf/tokens_per_s"] = sum(s.num_tokens for s in samples) / max(metrics["time/step"], 1e-9)
        return metrics

    def rollout(self, step: int, prompts: Sequence, more_prompts) -> List[Sample]:
        """Generate and score; with DAPO dynamic sampling, keep only groups whose rewards differ,
        drawing more prompts (at most ``max_sampling_rounds`` generations) to fill the batch."""
        a, world = self.cfg.algorithm, len(self.pools.trainers)
        rounds = a.max_sampling_rounds if a.dynamic_sampling and more_prompts else 1
        kept: List[List[Sample]] = []
        for r in range(rounds):
            with self.timed("generate"):
                samples = self.generate(prompts, a.group_size, self.cfg.rollout.temperature, stream=step * 64 + r)
            with self.timed("verify"):
                self.score(samples)  # the full response text, whatever the percentile
            groups = [samples[i:i + a.group_size] for i in range(0, len(samples), a.group_size)]
            if rounds == 1:
                return samples
            kept += [g for g in groups if len({s.reward for s in g}) > 1]
            if len(kept) >= self.cfg.data.prompts_per_step:
                break
            prompts = more_prompts()
        kept = kept[: self.cfg.data.prompts_per_step]
        while kept and (len(kept) * a.group_size) % world:
            kept.pop()  # every trainer rank must get the same number of samples
        kept = kept or groups  # nothing informative: train on the last round (zero advantages)
        for g, group in enumerate(kept):
            for s in group:
                s.group = g
        return [s for group in kept for s in group]

    def generate(self, prompts: Sequence, n: int, temperature: float, stream: int) -> List[Sample]:
        """``n`` responses per prompt; request seeds from (run seed, ``stream``, prompt index)."""
        ids = encode_prompts(self.tokenizer, [p.prompt for p in prompts], self.cfg.data.chat_template)
        seeds = request_seeds(self.cfg.seed, stream, len(prompts))
        samples = self.pools.rollouts.generate(ids, n, temperature, seeds)
        for s in samples:
            prompt = prompts[s.group]
            s.ground_truth, s.verifier = prompt.ground_truth, prompt.verifier
        return samples

    def score(self, samples: List[Sample]) -> None:
        requests = [(s.verifier, s.text, s.ground_truth) for s in samples]
        rewards, reasons = self.pools.reward.score(requests)
        for s, r, why in zip(samples, rewards, reasons):
            s.reward, s.reason = float(r), why

    def old_stats(self, samples: List[Sample]):
        """Trainer-side log-probs and entropies of every response token, ``[N, T]`` each."""
        world, packing = len(self.pools.trainers), self.cfg.trainer.packing
        plan = plan_micro_batches(samples, world, self.cfg.trainer.micro_batch_tokens, packing=packing)
        per_rank = [[build_micro_batch(samples, ix, packing) for ix in plan[r]] for r in range(world)]
        _, mask = pad_responses(samples)
        logprob, entropy = torch.zeros(mask.shape), torch.zeros(mask.shape)
        for rank_out in self.pools.trainers.compute_stats(per_rank):
            for index, lp, ent in rank_out:
                rows = torch.tensor(index)
                logprob[rows, : lp.shape[1]], entropy[rows, : ent.shape[1]] = lp, ent
        return logprob, entropy

    def train(self, step: int, samples: List[Sample], fields: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Split into ``updates_per_batch`` mini-batches (whole groups), plan micro-batches, train every rank."""
        cfg, world = self.cfg, len(self.pools.trainers)
        group_of = [s.group for s in samples]
        groups = sorted(set(group_of))
        chunks = [groups[j::cfg.trainer.updates_per_batch] for j in range(cfg.trainer.updates_per_batch)]
        per_rank: List[List] = [[] for _ in range(world)]
        denoms = []
        trained = 0
        skip = cfg.trainer.skip_zero_advantage and cfg.algorithm.loss.kl_coef == 0
        if skip:
            contributes = ((fields["advantages"] * fields["token_weight"]) != 0).any(dim=1).tolist()
        for chunk in chunks:
            in_chunk = set(chunk)
            index = [i for i, g in enumerate(group_of) if g in in_chunk]
            denoms.append(aggregation_denominator(cfg.algorithm.loss.agg, fields["token_weight"][index]))
            if skip:  # after the denominator: the left-out groups add exactly 0 to the loss
                index = contributing_samples(index, contributes, group_of, world)
            trained += len(index)
            plan = plan_micro_batches(samples, world, cfg.trainer.micro_batch_tokens, index, cfg.trainer.packing)
            for r in range(world):
                per_rank[r].append([build_micro_batch(samples, ix, cfg.trainer.packing).with_fields(**fields)
                                    for ix in plan[r]])
        metrics = self.pools.trainers.train(step, per_rank, cfg.algorithm.loss, denoms, cfg.rollout.max_tokens)
        return {**metrics, "train/trained_frac": trained / len(samples)}

    def sync_weights(self) -> None:
        """Rank 0 exports once; every engine loads the same object; hashes must match."""
        exported = self.pools.trainers.export_weights(WEIGHT_BUCKET_BYTES)
        # Ray hands the engines rank 0's buckets as soon as they exist: no driver round trip in between
        loaded = self.pools.rollouts.load_weights(exported.buckets)
        sent_hash = exported.hash()
        if any(h != sent_hash for h in loaded):
            raise RuntimeError(f"weight sync failed: trainer sent {sent_hash}, engines loaded {loaded}")

    @contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t


def needs_policy_stats(cfg: RLConfig, values: Dict[str, float]) -> bool:
    """Whether this step needs the pre-update log-probs/entropy pass: the credit criterion or the
    entropy-shaped advantage ranks by them, or the batch is split into several updates (off-policy
    after the first).  Otherwise the update is on-policy and the trainer's own forward suffices."""
    return (cfg.trainer.updates_per_batch > 1 or bool(values["entropy_adv_scale"])
            or cfg.algorithm.credit.criterion in POLICY_STAT_CRITERIA)


def assign_credit(a: AlgorithmConfig, values: Dict[str, float], adv_seq: torch.Tensor, mask: torch.Tensor,
                  old_logprob: Optional[torch.Tensor], entropy: Optional[torch.Tensor]):
    """Per-token advantages and ``token_weight`` for this step's broadcast (percentile, decay, scale)."""
    advantages = adv_seq[:, None] * mask
    if values["entropy_adv_scale"]:
        advantages = shape_advantages(advantages, entropy, values["entropy_adv_scale"],
                                      a.entropy_adv.alpha, a.entropy_adv.kappa) * mask
    credit_in = CreditInputs(token_mask=mask, entropy=entropy, logprob=old_logprob, advantages=advantages)
    token_weight, targeted, metrics = compute_token_weight(
        a.credit.criterion, credit_in, values["percentile"], values["decay"], a.credit.scope, a.group_size)
    return advantages, token_weight, targeted, metrics


def evaluate(loop: RLLoop, prompts: Sequence, temperature: float) -> float:
    """Held-out accuracy: one response per prompt (greedy at temperature 0)."""
    samples = loop.generate(prompts, 1, temperature, stream=EVAL_STREAM)
    loop.score(samples)
    return sum(s.reward >= 1.0 for s in samples) / max(len(samples), 1)
