"""Actor pools: one small class per pool, the only code that talks to Ray actors.

Design (slime's ``actor_group.py`` is the model): the RL step calls
``rollouts.generate(...)``, ``trainers.train(...)``, ``reward.score(...)`` and never loops
over actors or names methods as strings.  Each group owns its fan-out and its
failure policy, all through one helper, :func:`get`:

* rollout and reward actors are restarted by Ray (``max_restarts``) on a node their
  ``label_selector`` allows; the group waits for a dead actor to come back (saying once a
  minute which node it waits for, the autoscaler case), re-sends the latest weights to a
  restarted engine, and resubmits the failed call; a reward chunk goes to the next reward actor;
* trainer ranks are gang-scheduled in one placement group and fail fast together; the run
  recovers a lost rank by rebuilding the group from the last checkpoint
  (:meth:`Pools.restart_trainers`, :mod:`rlvr.loop.recovery`).

Each pool is placed from its own config section (``num_workers``, ``num_cpus``, ``num_gpus``,
``resources``, ``label_selector``), so pools scale independently.  The actor classes come in
from the caller (``workers.ACTORS``): the library never imports its own Ray shells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from rlvr.config import RLConfig
from rlvr.loop.recovery import CALL_RETRIES, get, wait_until_alive, waiting_for
from rlvr.loop.placement import restartable
from rlvr.loop.trainer_group import SchedulerClient, TrainerGroup
from rlvr.rollout.sample import Sample

# --------------------------------------------------------------------------- rollout
class RolloutGroup:
    """The rollout engines.  Prompts are split round-robin; results come back in prompt order."""

    def __init__(self, actors: Sequence[Any], need: str = ""):
        self.actors, self.need = list(actors), need  # need: what a restarting engine waits for (its log line)
        self.weights_ref = None  # the latest weights sent: what a restarted engine gets first
        self.weights_source: Optional[Callable[[], Any]] = None  # else how to get them (a collective sync
        # leaves nothing in the object store: the transport says how to export them when needed)
        self.restarts = 0  # engines restarted so far (a restarted engine has left any weight group)

    @classmethod
    def create(cls, actor_cls: type, cfg: RLConfig, model_path: str, run_dir: str) -> "RolloutGroup":
        remote = restartable(actor_cls, cfg.rollout)
        actors = [remote.remote(model_path, cfg.rollout, i, run_dir) for i in range(cfg.rollout.num_workers)]
        return cls(actors, waiting_for("rollout", cfg.rollout))

    def __len__(self) -> int:
        return len(self.actors)

    def generate(self, prompt_ids: Sequence[List[int]], n: int, temperature: float,
                 seeds: Sequence[int]) -> List[Sample]:
        """``n`` samples per prompt, sample j of prompt i at ``i * n + j`` with ``group = i``."""
        return self.submit(prompt_ids, n, temperature, seeds).result()

    def submit(self, prompt_ids: Sequence[List[int]], n: int, temperature: float,
               seeds: Sequence[int]) -> "PendingGeneration":
        """Start :meth:`generate` without waiting.  An engine runs its calls in order, so weights
        loaded after this call never touch this generation."""
        shards = [range(len(prompt_ids))[w::len(self.actors)] for w in range(len(self.actors))]

        def call(w, actor):
            return actor.generate.remote([prompt_ids[i] for i in shards[w]], n, temperature,
                                         [seeds[i] for i in shards[w]])

        return PendingGeneration(self, shards, n, call, [call(w, a) for w, a in enumerate(self.actors)])

    def load_weights(self, buckets_ref: Any) -> List[str]:
        """Every engine loads the same object (trainer rank 0's export); returns their hashes."""
        self.track_weights(lambda: buckets_ref)
        return self._each(lambda _, actor: actor.load_weights.remote(buckets_ref), "load_weights")

    def track_weights(self, source: Callable[[], Any]) -> None:
        """``source()`` gives an object-store copy of the latest weights, for an engine that restarts."""
        self.weights_ref, self.weights_source = None, source

    def open_weight_group_async(self, host: str, port: int, rank_offsets: Sequence[int], world_size: int,
                                backend: str, timeout_s: float) -> List[Any]:
        """Every engine joins the weight group (engine w at ``rank_offsets[w]``); refs, to wait on together
        with trainer rank 0's (a rendezvous)."""
        return [a.open_weight_group.remote(host, port, off, world_size, backend, timeout_s)
                for a, off in zip(self.actors, rank_offsets)]

    def receive_weights_async(self, plan: Any) -> List[Any]:
        """Every engine receives rank 0's broadcast; refs, to wait on together with the sender's."""
        return [a.receive_weights.remote(plan) for a in self.actors]

    def weights_hashes(self) -> List[str]:
        return self._each(lambda _, actor: actor.weights_hash.remote(), "weights_hash")

    def _each(self, call: Callable[[int, Any], Any], what: str) -> List[Any]:
        return self._collect([call(w, actor) for w, actor in enumerate(self.actors)], call, what)

    def _collect(self, refs: Sequence[Any], call: Callable[[int, Any], Any], what: str) -> List[Any]:
        return [get(ref, f"rollout worker {w} ({what})", lambda w=w: self._restarted(w, call), CALL_RETRIES)
                for w, ref in enumerate(refs)]

    def _restarted(self, w: int, call: Callable[[int, Any], Any]) -> Any:
        actor = self.actors[w]
        wait_until_alive(actor, need=self.need)
        self.restarts += 1
        if self.weights_ref is None and self.weights_source is not None:
            self.weights_ref = self.weights_source()
        if self.weights_ref is not None:  # else a restarted engine serves its start-up weights
            get(actor.load_weights.remote(self.weights_ref), f"rollout worker {w} (reload)")
        return call(w, actor)


class PendingGeneration:
    """A generation in flight: one ref per engine, with the time each finished (``done_at``)."""

    def __init__(self, group: RolloutGroup, shards: List[range], n: int, call: Callable[[int, Any], Any],
                 refs: List[Any]):
        self.group, self.shards, self.n, self.call, self.refs = group, shards, n, call, refs
        self.submitted = time.monotonic()
        self.done_at: List[Optional[float]] = [None] * len(refs)
        for w, ref in enumerate(refs):
            if hasattr(ref, "future"):  # a Ray ObjectRef (tests pass plain values)
                ref.future().add_done_callback(lambda _, w=w: self.done_at.__setitem__(w, time.monotonic()))
            else:
                self.done_at[w] = self.submitted

    def result(self) -> List[Sample]:
        """The samples in prompt order (``group`` = prompt index); a dead engine is restarted and redone."""
        outs = self.group._collect(self.refs, self.call, "generate")
        n = self.n
        samples: List[Sample] = [None] * (sum(len(s) for s in self.shards) * n)  # type: ignore[list-item]
        for shard, out in zip(self.shards, outs):
            for j, sample in enumerate(out):
                sample.group = shard[j // n]
                samples[sample.group * n + j % n] = sample
        return samples


# --------------------------------------------------------------------------- reward
class RewardGroup:
    """The reward pool: ``verifier.num_actors`` actors, each fronting its own sandboxed verifier processes.

    :meth:`score` splits the requests into contiguous chunks, one per actor, and joins the results in
    order; a chunk whose actor died goes to the next actor (the dead one restarts meanwhile), so no one
    actor is a single point of failure.  :meth:`submit_samples` picks the actors in turn."""

    def __init__(self, actors: Any, need: str = ""):
        self.actors = list(actors) if isinstance(actors, (list, tuple)) else [actors]
        self.need, self.calls = need, 0  # calls: submit_samples so far (its round-robin)

    @property
    def actor(self) -> Any:
        return self.actors[0]

    @classmethod
    def create(cls, actor_cls: type, cfg: RLConfig) -> "RewardGroup":
        remote = restartable(actor_cls, cfg.verifier)
        return cls([remote.remote(cfg.verifier) for _ in range(cfg.verifier.num_actors)],
                   waiting_for("reward", cfg.verifier))

    def score(self, requests: Sequence[Tuple[str, str, str]]) -> Tuple[List[float], List[str]]:
        """(rewards, reasons) for ``(verifier, response, ground_truth)`` requests, in order."""
        requests, n = list(requests), len(self.actors)
        cut = [len(requests) * i // n for i in range(n + 1)]
        chunks = [(i, requests[cut[i]:cut[i + 1]]) for i in range(n) if cut[i + 1] > cut[i]] or [(0, [])]
        refs = [self.actors[i].score.remote(chunk) for i, chunk in chunks]
        rewards: List[float] = []
        reasons: List[str] = []
        for (i, chunk), ref in zip(chunks, refs):
            tries = iter(range(1, 2 * CALL_RETRIES + 1))

            def resubmit(i=i, chunk=chunk, tries=tries):
                actor = self.actors[(i + next(tries)) % n]  # the next actor; with one, itself restarted
                wait_until_alive(actor, need=self.need)
                return actor.score.remote(chunk)

            r, why = get(ref, f"reward actor {i}", resubmit, retries=2 * CALL_RETRIES)
            rewards += list(r)
            reasons += list(why)
        return rewards, reasons

    def wait(self, ref: Any) -> Tuple[List[float], List[str]]:
        """The result of :meth:`submit_samples` (raises if that reward actor died meanwhile)."""
        return get(ref, "reward pool")

    def submit_samples(self, samples_ref: Any, labels: Sequence[Tuple[str, str]]) -> Any:
        """Score a rollout engine's pending output as soon as it exists (a ref; Ray resolves it
        in the reward actor); ``labels[i] = (verifier, ground_truth)``.  Returns a ref."""
        actor = self.actors[self.calls % len(self.actors)]
        self.calls += 1
        return actor.score_samples.remote(samples_ref, list(labels))


# --------------------------------------------------------------------------- all pools
@dataclass
class ActorClasses:
    """The Ray shells a run is built from (``workers.ACTORS``), one class per role."""

    rollout: type
    reward: type
    trainer: type
    scheduler: type


@dataclass
class Pools:
    rollouts: RolloutGroup
    reward: RewardGroup
    trainers: TrainerGroup
    scheduler: SchedulerClient
    transport: Any = None  # rlvr.rollout.transport.WeightTransport (weight_sync.transport)

    def sync_weights(self) -> Any:
        """Trainer rank 0's weights to every engine; a ``SyncResult`` (sent hash, loaded hashes, metrics)."""
        return self.transport.sync(self.trainers, self.rollouts)

    def restart_trainers(self, cfg: RLConfig, classes: "ActorClasses", model_path: str) -> None:
        """After a lost rank: a fresh trainer group at ``model_path``'s weights, a Scheduler pushing to its
        ranks (step 0) and a fresh weight transport (the old weight group had the old rank 0).  The caller
        loads the checkpoint and re-syncs the engines."""
        from rlvr.rollout.transport import make_transport

        self.trainers.shutdown()
        self.scheduler.shutdown()
        self.trainers = TrainerGroup.create(classes.trainer, cfg, model_path)
        self.scheduler = SchedulerClient.create(classes.scheduler, cfg, self.trainers)
        self.transport = make_transport(cfg)


def create_serving(cfg: RLConfig, classes: ActorClasses, model_path: str,
                   run_dir: str) -> Tuple[RolloutGroup, RewardGroup]:
    """The rollout engines serving ``model_path`` and the reward pool: all that ``rlvr eval`` needs."""
    return RolloutGroup.create(classes.rollout, cfg, model_path, run_dir), RewardGroup.create(classes.reward, cfg)


def create_pools(cfg: RLConfig, classes: ActorClasses, model_path: str, run_dir: str) -> Pools:
    rollouts, reward = create_serving(cfg, classes, model_path, run_dir)
    from rlvr.rollout.transport import make_transport

    trainers = TrainerGroup.create(classes.trainer, cfg, model_path)
    return Pools(rollouts, reward, trainers, SchedulerClient.create(classes.scheduler, cfg, trainers),
                 make_transport(cfg))
