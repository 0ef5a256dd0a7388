"""The RL step of TP-Schedule (arXiv 2605.25381) across the actor pools.

One step, top to bottom (``RLLoop.step``):
  sample prompts -> generate (vLLM) -> verify the FULL response [-> DAPO dynamic
  sampling or Reinforce-Ada's further rounds] -> [DAPO overlong penalty on the
  response length] -> advantages -> scheduler broadcasts (step, percentile,
  decay, sample_keep) -> [D^3S: keep the max-Var(A) samples] -> [old log-probs/entropy,
  only when credit or the entropy-shaped advantage ranks by them, or the batch
  takes several updates; plus the reference log-probs of a KL term]
  -> token credit -> train (FSDP) -> sync weights to the engines.

Design decisions:
* Rewards are computed on the full response text, before any credit masking.
  (The paper's released code scores only the unmasked suffix, which at a 0.99
  threshold cuts the final answer away.)
* The driver computes advantages, ``token_weight`` and the loss denominators;
  trainers never see rewards or groups (algorithm-blind).  The Scheduler actor
  pushes the step's percentile/decay to every trainer, and a trainer refuses to
  train on a step it was not told about.
* The training reward is the verifier's plus DAPO's soft overlong penalty
  (:func:`shape_rewards`, arXiv 2503.14476 Eq. 13) on the response length in
  tokens.  DAPO's dynamic sampling keeps groups by the *verifier* reward (the
  paper filters on accuracy 0 or 1, as verl's ``filter_groups.metric=acc``);
  ``train/accuracy`` is the verifier's too.
* A KL term (``kl_coef > 0``) takes the stats pass: the trainers return the
  frozen reference policy's log-probs beside the old ones, as the
  ``ref_logprob`` field.  With ``kl_coef = 0`` there is no reference model.
* Groups whose advantage x token_weight is zero everywhere (zero-variance GRPO
  groups) are left out of the forward/backward after the loss denominator is
  fixed: the gradient is unchanged (``trainer.skip_zero_advantage``; not with a
  KL term).  Unlike DAPO's dynamic sampling this keeps the estimator as it is.
* ``algorithm.sampling`` picks the rollout: ``standard``, ``dynamic`` (DAPO; also
  ``dynamic_sampling=true``) or ``reinforce_ada`` (:func:`reinforce_ada_rollout`:
  a prompt is sampled again, G responses a round, until it can form a balanced
  group; its advantages use the mean/std of every response collected for it).
* D^3S's sample level (``algorithm.down_sample``, :mod:`rlvr.algo.d3s`) ANDs its
  kept mask into the token mask before the credit: a dropped sample gets
  advantage 0 and token_weight 0, so it counts in no denominator.
* The step talks to pools (:mod:`rlvr.loop.groups`), never to single actors: a dead
  rollout or reward actor is restarted there, with the latest weights re-sent.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from rlvr.algo.advantages import ADVANTAGES
from rlvr.algo.credit import POLICY_STAT_CRITERIA, CreditInputs, compute_token_weight
from rlvr.algo.d3s import down_sample
from rlvr.algo.entropy_adv import shape_advantages
from rlvr.algo.losses import aggregation_denominator
from rlvr.algo.overlong import overlong_penalty
from rlvr.algo.reinforce_ada import balanced_group, is_done, prompt_advantages
from rlvr.config import AlgorithmConfig, LossConfig, OverlongConfig, RLConfig
from rlvr.data import encode_prompts
from rlvr.algo.offpolicy import OFF_POLICY, OffPolicyInputs
from rlvr.loop.groups import Pools
from rlvr.loop.pipeline import Interval, RolloutPipeline, intersect, union_length
from rlvr.rollout.engine import EVAL_STREAM, request_seeds
from rlvr.rollout.sample import Sample
from rlvr.train.batching import (build_micro_batch, contributing_samples, pad_responses, pad_values,
                                 plan_micro_batches)


TRAINER_PHASES = ("stats", "train", "sync")  # what keeps the trainer pool busy


class RLLoop:
    def __init__(self, cfg: RLConfig, pools: Pools, tokenizer):
        self.cfg, self.pools, self.tokenizer = cfg, pools, tokenizer
        self.times: Dict[str, float] = {}
        self.sampling: Dict[str, float] = {}  # the last rollout's dynamic-sampling outcome (sampling/*)
        self.collected: Optional[List[List[float]]] = None  # Reinforce-Ada: every reward of each group's prompt
        self.generated = 0  # responses generated for the current step, every sampling round included
        self.pipeline = RolloutPipeline(self, cfg.rollout.max_staleness)
        self.trainer_busy: List[Interval] = []  # when the trainers ran stats / train / sync

    def step(self, step: int, next_batch: Callable[[], Sequence]) -> Dict[str, float]:
        """Train step ``step`` (the engines hold the weights after ``step`` updates); prompts come from
        ``next_batch``, drawn in step order (ahead of time when ``rollout.max_staleness`` > 0)."""
        a = self.cfg.algorithm
        self.times = {}
        t0, window_start = time.perf_counter(), time.monotonic()
        samples, pipe_metrics = self.rollout(step, next_batch)  # generate + verify (+ dynamic sampling)
        verified = torch.tensor([s.reward for s in samples])
        rewards, reward_metrics = shape_rewards(verified, torch.tensor([len(s.response_ids) for s in samples]),
                                                a.overlong)
        adv_seq, adv_metrics = self.advantages(rewards)
        values = self.pools.scheduler.broadcast()
        kept, kept_metrics = self.select_samples(values, adv_seq)  # D^3S sample level
        _, mask = pad_responses(samples)
        old_logprob = entropy = ref_logprob = None
        if needs_policy_stats(self.cfg, values):  # else on-policy: the trainer uses its own forward
            with self.timed("stats"):
                old_logprob, entropy, ref_logprob = self.old_stats(samples)
        with self.timed("credit"):
            advantages, token_weight, targeted, credit_metrics = assign_credit(
                a, values, adv_seq, mask & kept[:, None], old_logprob, entropy)
            behaviour = pad_values([s.rollout_logprob for s in samples], mask.shape[1])
            advantages, token_weight, old_logprob, offpolicy_metrics = correct_off_policy(
                a.loss, advantages, token_weight, mask, old_logprob, behaviour)
        with self.timed("train"):
            fields = {"advantages": advantages, "token_weight": token_weight, "targeted": targeted.float()}
            if old_logprob is not None:
                fields["old_logprob"] = old_logprob
            if ref_logprob is not None:  # the KL term's reference policy
                fields["ref_logprob"] = ref_logprob
            if self.cfg.rollout.return_logprobs:  # for the train/inference mismatch metric
                fields["rollout_logprob"] = behaviour
            train_metrics = self.train(step, samples, fields)
        with self.timed("sync"):
            sync_metrics = self.sync_weights()
        self.pools.scheduler.advance()
        n_tokens = float(mask.sum())
        metrics = {
            "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "train/accuracy": float((verified >= 1.0).float().mean()), **reward_metrics,
            **self.sampling, **kept_metrics,
            "response/length_mean": n_tokens / len(samples),
            "adv/zero_variance_group_frac": adv_metrics.get("zero_variance_group_frac", 0.0),
            "credit/targeted_frac": credit_metrics["targeted_frac"],
            "credit/token_weight_mean": credit_metrics["token_weight_mean"],
            "verifier/failures": float(sum(1 for s in samples if s.reason)),
            **train_metrics, **pipe_metrics, **offpolicy_metrics, **sync_metrics,
            **self.pool_metrics((window_start, time.monotonic())),
            **{f"time/{k}": v for k, v in self.times.items()},
        }
        metrics["time/step"] = time.perf_counter() - t0
        metrics["perf/tokens_per_s"] = sum(s.num_tokens for s in samples) / max(metrics["time/step"], 1e-9)
        return metrics

    def rollout(self, step: int, next_batch: Callable[[], Sequence]) -> Tuple[List[Sample], Dict[str, float]]:
        """Generate and score per ``algorithm.sampling``; round 0 comes through the pipeline (generated up to
        ``max_staleness`` steps ahead, scored as each engine finishes); the full response text is scored,
        whatever the percentile.  ``self.sampling`` gets the rollout's ``sampling/*`` metrics."""
        a = self.cfg.algorithm
        self.sampling, self.collected = {}, None
        samples, prompts, pipe_metrics = self.pipeline.take(step, step, next_batch)
        self.generated = len(samples)  # generate_scored adds the further rounds
        mode = "dynamic" if a.dynamic_sampling else a.sampling
        if mode == "dynamic" and a.max_sampling_rounds > 1:
            samples = self.dynamic_rollout(step, samples, next_batch)
        elif mode == "reinforce_ada":
            samples, self.collected, self.sampling = reinforce_ada_rollout(self, step, prompts, samples)
        self.sampling["sampling/samples_generated"] = float(self.generated)  # the step's generation budget
        return samples, pipe_metrics

    def dynamic_rollout(self, step: int, samples: List[Sample], next_batch: Callable[[], Sequence]) -> List[Sample]:
        """DAPO dynamic sampling: keep only groups whose rewards differ, drawing more prompts (at most
        ``max_sampling_rounds`` generations) to fill the batch.  A batch left short says so in
        ``self.sampling``: ``sampling/groups_short`` (``prompts_per_step`` minus the informative groups
        kept) and ``sampling/rounds``."""
        a, world = self.cfg.algorithm, len(self.pools.trainers)
        kept: List[List[Sample]] = []
        for r in range(a.max_sampling_rounds):
            if r:  # further rounds: generated now, by the current policy
                samples = self.generate_scored(next_batch(), step * 64 + r)
            groups = [samples[i:i + a.group_size] for i in range(0, len(samples), a.group_size)]
            kept += [g for g in groups if len({s.reward for s in g}) > 1]
            if len(kept) >= self.cfg.data.prompts_per_step:
                break
        kept = kept[: self.cfg.data.prompts_per_step]
        while kept and (len(kept) * a.group_size) % world:
            kept.pop()  # every trainer rank must get the same number of samples
        self.sampling = {"sampling/rounds": float(r + 1),
                         "sampling/groups_short": float(self.cfg.data.prompts_per_step - len(kept))}
        return regroup(kept or groups)  # nothing informative: train on the last round (zero advantages)

    def generate_scored(self, prompts: Sequence, stream: int) -> List[Sample]:
        """``group_size`` scored responses per prompt, generated now (a further sampling round)."""
        with self.timed("generate"):
            samples = self.generate(prompts, self.cfg.algorithm.group_size, self.cfg.rollout.temperature, stream)
        self.generated += len(samples)
        with self.timed("verify"):
            self.score(samples)
        return samples

    def advantages(self, rewards: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``algorithm.advantage`` over each group; after Reinforce-Ada against each prompt's collected rewards."""
        a = self.cfg.algorithm
        if self.collected is None:
            return ADVANTAGES.get(a.advantage)(rewards, a.group_size, a.advantage_eps)
        return prompt_advantages(rewards, self.collected, a.group_size, a.advantage == "grpo", a.advantage_eps)

    def select_samples(self, values: Dict[str, float], adv_seq: torch.Tensor):
        """D^3S sample level: the kept mask ``[N]`` at the broadcast ``sample_keep``, and its metrics."""
        a = self.cfg.algorithm
        if a.down_sample == "none":
            return torch.ones(len(adv_seq), dtype=torch.bool), {}
        kept, metrics = down_sample(a.down_sample, adv_seq, a.group_size, values["sample_keep"])
        return kept, {"schedule/sample_keep": values["sample_keep"], **{f"d3s/{k}": v for k, v in metrics.items()}}

    def generate(self, prompts: Sequence, n: int, temperature: float, stream: int) -> List[Sample]:
        """``n`` responses per prompt; request seeds from (run seed, ``stream``, prompt index)."""
        samples = self.submit_generation(prompts, n, temperature, stream).result()
        self.label(samples, prompts)
        return samples

    def submit_generation(self, prompts: Sequence, n: int, temperature: float, stream: int):
        ids = encode_prompts(self.tokenizer, [p.prompt for p in prompts], self.cfg.data.chat_template)
        return self.pools.rollouts.submit(ids, n, temperature, request_seeds(self.cfg.seed, stream, len(prompts)))

    @staticmethod
    def label(samples: List[Sample], prompts: Sequence) -> None:
        for s in samples:
            s.ground_truth, s.verifier = prompts[s.group].ground_truth, prompts[s.group].verifier

    def score(self, samples: List[Sample]) -> None:
        requests = [(s.verifier, s.text, s.ground_truth) for s in samples]
        rewards, reasons = self.pools.reward.score(requests)
        for s, r, why in zip(samples, rewards, reasons):
            s.reward, s.reason = float(r), why

    def old_stats(self, samples: List[Sample]):
        """Trainer-side log-probs and entropies of every response token, ``[N, T]`` each, and the reference
        policy's log-probs (None when the trainers hold no reference: no KL term)."""
        world, packing = len(self.pools.trainers), self.cfg.trainer.packing
        plan = plan_micro_batches(samples, world, self.cfg.trainer.micro_batch_tokens, packing=packing)
        per_rank = [[build_micro_batch(samples, ix, packing) for ix in plan[r]] for r in range(world)]
        _, mask = pad_responses(samples)
        logprob, entropy = torch.zeros(mask.shape), torch.zeros(mask.shape)
        ref_logprob = torch.zeros(mask.shape) if self.cfg.algorithm.loss.kl_coef > 0 else None
        for rank_out in self.pools.trainers.compute_stats(per_rank):
            for index, lp, ent, *ref in rank_out:
                rows = torch.tensor(index)
                logprob[rows, : lp.shape[1]], entropy[rows, : ent.shape[1]] = lp, ent
                if ref_logprob is not None:
                    ref_logprob[rows, : ref[0].shape[1]] = ref[0]
        return logprob, entropy, ref_logprob

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

    def sync_weights(self) -> Dict[str, float]:
        """Trainer rank 0 -> every engine over ``weight_sync.transport``; every engine's hash must equal
        the hash of what rank 0 sent.  Returns the sync's ``sync/...`` metrics."""
        result = self.pools.sync_weights()
        if any(h != result.sent_hash for h in result.loaded):
            raise RuntimeError(f"weight sync failed ({self.cfg.weight_sync.transport}): trainer sent "
                               f"{result.sent_hash}, engines loaded {result.loaded}")
        return result.metrics

    @contextmanager
    def timed(self, name: str):
        t, start = time.perf_counter(), time.monotonic()
        yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
        if name in TRAINER_PHASES:
            self.trainer_busy = [*self.trainer_busy[-31:], (start, time.monotonic())]

    def pool_metrics(self, window: Interval) -> Dict[str, float]:
        """Share of the step each pool was busy, and the share both were (the pipeline's gain)."""
        length = max(window[1] - window[0], 1e-9)
        engines = self.pipeline.engine_intervals(window[1])
        return {"pipeline/rollout_busy_frac": union_length(engines, window) / length,
                "pipeline/trainer_busy_frac": union_length(self.trainer_busy, window) / length,
                "pipeline/overlap_frac": union_length(intersect(engines, self.trainer_busy), window) / length}


def regroup(groups: List[List[Sample]]) -> List[Sample]:
    """The samples of ``groups`` in order, each labelled with its group's new index."""
    for g, group in enumerate(groups):
        for s in group:
            s.group = g
    return [s for group in groups for s in group]


def reinforce_ada_rollout(loop: RLLoop, step: int, prompts: Sequence, first: List[Sample]):
    """Reinforce-Ada: every prompt not yet :func:`is_done` (``algorithm.exit_rule``) gets ``group_size`` more responses a
    round (seed stream ``step * 64 + round``), for at most ``max_sampling_rounds`` rounds in all; then
    each prompt's group is :func:`balanced_group` of what it collected.  Returns (samples, every collected
    reward per group, ``sampling/*`` metrics)."""
    a = loop.cfg.algorithm
    collected: List[List[Sample]] = [[] for _ in prompts]
    for s in first:
        collected[s.group].append(s)

    def active() -> List[int]:
        return [i for i, got in enumerate(collected)
                if not is_done([s.reward for s in got], a.group_size, a.exit_rule)]

    rounds, todo = 1, active()
    while todo and rounds < a.max_sampling_rounds:
        for s in loop.generate_scored([prompts[i] for i in todo], step * 64 + rounds):
            collected[todo[s.group]].append(s)
        rounds, todo = rounds + 1, active()
    rewards = [[s.reward for s in got] for got in collected]
    groups = [[got[j] for j in balanced_group(r, a.group_size)] for got, r in zip(collected, rewards)]
    metrics = {"sampling/rounds": float(rounds), "sampling/unfinished_frac": len(todo) / max(len(prompts), 1),
               "sampling/responses_per_prompt": sum(map(len, rewards)) / max(len(prompts), 1)}
    return regroup(groups), rewards, metrics


def needs_policy_stats(cfg: RLConfig, values: Dict[str, float]) -> bool:
    """Whether this step needs the pre-update log-probs/entropy pass: the credit criterion or the
    entropy-shaped advantage ranks by them, the batch is split into several updates (off-policy
    after the first), or a KL term needs the reference log-probs (computed in the same pass).
    Otherwise the update is on-policy and the trainer's own forward suffices."""
    return (cfg.trainer.updates_per_batch > 1 or bool(values["entropy_adv_scale"])
            or cfg.algorithm.credit.criterion in POLICY_STAT_CRITERIA or cfg.algorithm.loss.kl_coef > 0
            or cfg.algorithm.loss.off_policy in ("tis", "mis"))


def shape_rewards(verified: torch.Tensor, response_length: torch.Tensor, overlong: OverlongConfig):
    """The training reward ``[N]``: the verifier's reward of the full response plus DAPO's soft overlong
    penalty on ``response_length`` ``[N]`` (tokens) when ``overlong.enabled``; and its metrics (the mean
    penalty and the share of penalised samples)."""
    if not overlong.enabled:
        return verified, {}
    penalty = overlong_penalty(response_length, overlong.max_len, overlong.cache, overlong.penalty)
    metrics = {"reward/overlong_penalty_mean": float(penalty.mean()),
               "reward/overlong_frac": float((penalty < 0).float().mean())}
    return verified + penalty, metrics


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


def correct_off_policy(loss: LossConfig, advantages: torch.Tensor, token_weight: torch.Tensor, mask: torch.Tensor,
                       old_logprob: Optional[torch.Tensor], behaviour: torch.Tensor):
    """``algorithm.loss.off_policy`` applied to what the trainer gets (:mod:`rlvr.algo.offpolicy`);
    ``none`` leaves everything as it is and logs nothing."""
    if loss.off_policy == "none":
        return advantages, token_weight, old_logprob, {}
    inputs = OffPolicyInputs(advantages, token_weight, mask.bool(),
                             behaviour if old_logprob is None else old_logprob, behaviour)
    return OFF_POLICY.get(loss.off_policy)(inputs, loss.is_cap)
