"""Several Ray nodes on one machine, labelled like the KubeRay worker groups (``rlvr.io/pool``), with token
auth on: every pool lands on its own nodes, a lost rollout node's engine waits (saying what for) and comes
back on a replacement node, a lost reward node's actors move to the other reward node, and one dead reward
actor costs nothing (its chunk goes to the other)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlvr.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LABEL = "rlvr.io/pool"
ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


def _add(cluster, pool):
    return cluster.add_node(num_cpus=1, labels={LABEL: pool})


@pytest.fixture(scope="module")
def cluster():
    """A head (no CPUs: the driver and the Scheduler) and one node per pool, two for the reward pool."""
    import ray
    from ray._common.utils import reset_ray_address
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)  # the nodes inherit it: token auth on every raylet, as on a real cluster
    reset_auth_token_state()  # this process read RAY_AUTH_MODE when it imported Ray: read it again
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    reset_ray_address()  # a plain ray.init() elsewhere on this machine must not join this cluster
    nodes = {pool: _add(c, pool) for pool in ("rollout", "trainer", "reward")}
    nodes["reward_b"] = _add(c, "reward")
    try:
        yield c, nodes
    finally:
        ray.shutdown()
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        reset_auth_token_state()


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory):
    from rlvr.loop.run import build_run
    from workers import ACTORS

    c, _ = cluster
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml")], [
        f"logging.run_dir={tmp_path_factory.mktemp('multinode')}", f"cluster.address={c.address}",
        "schedule.total_steps=2", "eval.num_prompts=8", "logging.progress=false", "logging.tensorboard=false",
        f"rollout.label_selector={{{LABEL}: rollout}}", f"trainer.label_selector={{{LABEL}: trainer}}",
        f"verifier.label_selector={{{LABEL}: reward}}", "verifier.num_actors=2"])
    return build_run(cfg, ACTORS)


def _node_of(actor):
    import ray

    node_id = actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
    return ray.get(node_id, timeout=120)


def _labels():
    import ray

    return {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes() if n["Alive"]}


def _pools(r):
    p = r.loop.pools
    return {"rollout": p.rollouts.actors, "trainer": p.trainers.actors, "reward": p.reward.actors}


def test_a_run_over_labelled_nodes_places_every_pool_on_its_label(run):
    from rlvr.loop.run import train_steps

    summary = train_steps(run)
    assert summary["train/trained_frac"] > 0 and "eval/accuracy_after" in summary
    labels = _labels()
    for pool, actors in _pools(run).items():
        assert [labels[_node_of(a)].get(LABEL) for a in actors] == [pool] * len(actors), pool
    assert LABEL not in labels[_node_of(run.loop.pools.scheduler.actor)]  # beside the driver, on the head


def test_token_auth_is_on(cluster):
    c, _ = cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{c.address}')"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "token" in (out.stdout + out.stderr).lower()


def test_a_lost_rollout_node_waits_for_a_replacement_and_resumes_on_it(cluster, run, monkeypatch, capfd):
    from rlvr.loop import recovery

    c, nodes = cluster
    monkeypatch.setattr(recovery, "WAIT_NOTICE_S", 3.0)
    engine = run.loop.pools.rollouts.actors[0]
    c.remove_node(nodes["rollout"])  # no other rollout node: the engine cannot restart yet
    step, out = run.cfg.schedule.total_steps, {}

    def train():  # blocks until the engine is back, then its generation is redone
        try:
            out["metrics"] = run.loop.step(step, run.sampler.next_batch)
        except Exception as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    time.sleep(12)  # the run waits, and says what for, while no rollout node exists
    assert thread.is_alive() and not out
    joined = _add(c, "rollout")  # Cluster.add_node needs the main thread
    thread.join(timeout=240)
    assert "error" not in out, out.get("error")
    metrics = out["metrics"]
    err = capfd.readouterr().err
    assert "rollout pool: waiting for a node with rlvr.io/pool=rollout and 0.5 CPU (actor restarting" in err
    assert _node_of(engine) == joined.node_id
    assert metrics["rollout/logprob_mismatch"] < 1e-4  # the restarted engine got the synced weights
    hashes = run.loop.pools.rollouts.weights_hashes()
    assert hashes == [run.loop.pools.trainers.export_weights(1 << 30).hash()]


def test_a_lost_reward_node_moves_its_actors_to_the_other_reward_node(cluster, run):
    c, nodes = cluster
    reward = run.loop.pools.reward
    where = {_node_of(a) for a in reward.actors}
    lost = next(n for k, n in nodes.items() if k.startswith("reward") and n.node_id in where)
    c.remove_node(lost)
    requests = [("arithmetic", "7", "7"), ("arithmetic", "5", "6"), ("arithmetic", "3", "3")]
    rewards, reasons = reward.score(requests)
    assert (rewards, reasons) == ([1.0, 0.0, 1.0], ["", "", ""])  # in order, through both chunks
    labels = _labels()
    after = [_node_of(a) for a in reward.actors]
    assert all(labels[n].get(LABEL) == "reward" for n in after) and lost.node_id not in after


def test_a_dead_reward_actor_hands_its_chunk_to_the_other(run, capfd):
    import ray

    reward = run.loop.pools.reward
    pid = ray.get(reward.actors[1].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    requests = [("arithmetic", str(i), str(i % 3)) for i in range(6)]
    rewards, _ = reward.score(requests)
    assert rewards == [1.0 if i == i % 3 else 0.0 for i in range(6)]
    assert "reward actor 1: actor died; retrying (1/4)" in capfd.readouterr().err  # sent to actor 0
    step = run.cfg.schedule.total_steps + 1
    metrics = run.loop.step(step, run.sampler.next_batch)  # the pipeline's round-robin reaches both again
    assert metrics["verifier/failures"] == 0.0
