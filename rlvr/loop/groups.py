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

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rlvr.config import PoolConfig, RLConfig
from rlvr.loop.recovery import CALL_RETRIES, gather, get, log, wait_until_alive, waiting_for
from rlvr.rollout.sample import Sample

ACTOR_RESTARTS = 3  # how often Ray brings back a dead rollout or reward actor


def actor_options(pool: PoolConfig) -> Dict[str, Any]:
    """Ray scheduling options of one actor of ``pool``."""
    opts: Dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus}
    if pool.resources:
        opts["resources"] = dict(pool.resources)
    if pool.label_selector:
        opts["label_selector"] = dict(pool.label_selector)
    return opts


def _restartable(cls: type, pool: PoolConfig):
    import ray

    return ray.remote(cls).options(**actor_options(pool), max_restarts=ACTOR_RESTARTS, max_task_retries=0)


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
        remote = _restartable(actor_cls, cfg.rollout)
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
        remote = _restartable(actor_cls, cfg.verifier)
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


# --------------------------------------------------------------------------- trainer
@dataclass
class WeightExport:
    """Trainer rank 0's exported weight buckets (an object ref the engines read directly) and its hash."""

    buckets: Any
    hash_refs: List[Any]

    def hash(self) -> str:
        return gather(self.hash_refs, "trainer (export_weights)")[0]


class TrainerGroup:
    """The trainer ranks (one FSDP2 process group), gang-scheduled in one placement group."""

    def __init__(self, actors: Sequence[Any], placement_group: Any = None):
        self.actors, self.placement_group = list(actors), placement_group

    @classmethod
    def create(cls, actor_cls: type, cfg: RLConfig, model_path: str) -> "TrainerGroup":
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        t, n = cfg.trainer, cfg.trainer.num_workers
        bundle = {k: v for k, v in {"CPU": t.num_cpus, "GPU": t.num_gpus, **t.resources}.items() if v}
        pg = placement_group([bundle] * n, strategy="PACK",
                             bundle_label_selector=[dict(t.label_selector)] * n if t.label_selector else None)
        ready = pg.ready()
        while not ray.wait([ready], timeout=60.0)[0]:  # the autoscaler case: say what the gang waits for
            log(f"{waiting_for('trainer', t)} for each of {n} rank(s) (placement group pending)")
        remote = ray.remote(actor_cls)
        actors = [remote.options(**actor_options(t), scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=rank)).remote(rank, n, t, cfg.seed) for rank in range(n)]
        addr, port = ray.get(actors[0].address.remote())
        reference = cfg.algorithm.loss.kl_coef > 0  # the KL's frozen reference policy; none without a KL term
        group = cls(actors, pg)
        gather([a.setup.remote(addr, port, model_path, cfg.rollout.temperature, reference) for a in actors],
               "trainer (setup)")
        return group

    def __len__(self) -> int:
        return len(self.actors)

    def compute_stats(self, per_rank: Sequence[Sequence[Any]]) -> List[Any]:
        """Old log-probs/entropy (and reference log-probs with a KL term): rank r gets ``per_rank[r]``'s
        micro-batches; one list per rank."""
        refs = [a.compute_stats.remote(mbs) for a, mbs in zip(self.actors, per_rank)]
        return gather(refs, "trainer (stats)")

    def train(self, step: int, per_rank: Sequence[Sequence[Any]], loss_cfg: Any, denoms: Sequence[float],
              norm_len: int) -> Dict[str, float]:
        """One optimizer step per mini-batch on every rank; returns rank 0's metrics."""
        refs = [a.train.remote(step, mbs, loss_cfg, denoms, norm_len) for a, mbs in zip(self.actors, per_rank)]
        return gather(refs, "trainer (train)")[0]

    def export_weights(self, bucket_bytes: int, dtype: Optional[str] = None) -> WeightExport:
        """Rank 0's full state dict (cast to ``dtype`` if given) as safetensors buckets in the object store."""
        outs = [a.export_weights.options(num_returns=2).remote(bucket_bytes, dtype) for a in self.actors]
        return WeightExport(outs[0][0], [h for _, h in outs])

    def weight_group_address(self) -> Tuple[str, int]:
        """Rank 0's (ip, free port): the rendezvous of the trainer -> engines weight group."""
        return get(self.actors[0].address.remote(), "trainer rank 0 (address)")

    def open_weight_group_async(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> Any:
        """Rank 0 joins the weight group as rank 0; a ref, to wait on together with the engines'."""
        return self.actors[0].open_weight_group.remote(host, port, world_size, backend, timeout_s)

    def stage_weights(self, bucket_bytes: int, dtype: str, backend: str) -> Dict[str, Any]:
        """Gather (every rank) and pack (rank 0) for a broadcast; rank 0's ``{plan, hash, metrics}``."""
        return gather([a.stage_weights.remote(bucket_bytes, dtype, backend) for a in self.actors],
                      "trainer (stage_weights)")[0]

    def send_weights_async(self) -> Any:
        return self.actors[0].send_weights.remote()

    def received_schedules(self) -> List[List[Dict[str, float]]]:
        return gather([a.received_schedule.remote() for a in self.actors], "trainer (schedule)")

    def save(self, path: str) -> None:
        gather([a.save.remote(path) for a in self.actors], "trainer (save)")

    def load(self, path: str) -> None:
        gather([a.load.remote(path) for a in self.actors], "trainer (load)")

    def dead_ranks(self, timeout_s: float = 10.0) -> List[int]:
        """The ranks whose actor died (a probe gets ``RayActorError``); a rank still busy in a call,
        e.g. waiting in a collective for a dead peer, counts as alive."""
        import ray

        probes = [a.__ray_ready__.remote() for a in self.actors]
        pending, dead, deadline = list(probes), [], time.monotonic() + timeout_s
        while pending and not dead and time.monotonic() < deadline:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                try:
                    ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    dead.append(probes.index(ref))
        return sorted(dead)

    def shutdown(self) -> None:
        """Kill every rank (no restart) and free the placement group: a lost rank takes the group with it."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)


# --------------------------------------------------------------------------- scheduler
class SchedulerClient:
    """The Scheduler actor (the one clock): pushes each step's values to the trainers."""

    def __init__(self, actor: Any):
        self.actor = actor

    @classmethod
    def create(cls, actor_cls: type, cfg: RLConfig, trainers: TrainerGroup) -> "SchedulerClient":
        """On the driver's node (0 CPUs, fits even a CPU-less head): losing a pool's node never takes the clock."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(actor_cls).options(name=f"scheduler:{cfg.name}", num_cpus=0, scheduling_strategy=here)
        return cls(remote.remote(cfg.schedule, trainers.actors))

    def shutdown(self) -> None:
        """Kill the actor and wait until Ray has it dead (its name is free again)."""
        import ray

        ray.kill(self.actor, no_restart=True)
        try:
            ray.get(self.actor.__ray_ready__.remote(), timeout=30)
        except ray.exceptions.RayError:  # dead, as wanted
            pass

    def broadcast(self) -> Dict[str, float]:
        return get(self.actor.broadcast.remote(), "scheduler")

    def advance(self) -> int:
        return get(self.actor.advance.remote(), "scheduler")

    def state_dict(self) -> Dict[str, int]:
        return get(self.actor.state_dict.remote(), "scheduler")

    def load_state_dict(self, state: Dict[str, int]) -> None:
        get(self.actor.load_state_dict.remote(state), "scheduler")


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


def start_ray(cfg: RLConfig) -> None:
    """Join ``cluster.address`` (or ``RAY_ADDRESS``), else start a local Ray with the dashboard off."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:  # a submitted job: its runtime_env (and any --env the user gave) already applies
        ray.init(address=address, namespace=cfg.cluster.namespace)
    else:
        runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}}
        # address="local": always a new instance, never a `ray start` cluster that happens to run here
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, namespace=cfg.cluster.namespace,
                 runtime_env=runtime_env, dashboard_host=cfg.cluster.dashboard_host, include_dashboard=False)


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
