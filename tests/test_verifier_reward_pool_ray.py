"""The RewardPool Ray actor: a thin shell that scores, reports, survives a killed process."""

import pytest

from rlvr.config import VerifierConfig
from rlvr.loop.placement import actor_options
from workers.reward_pool import RewardPool

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_reward_pool_actor_scores_reports_and_survives_a_kill(ray_cluster):
    cfg = VerifierConfig(num_workers=2, num_cpus=1.0, timeout_s=2.0, max_memory_mb=1024, format_weight=0.1)
    pool = ray.remote(RewardPool).options(**actor_options(cfg), max_restarts=1).remote(cfg)
    requests = [("math", r"so $\boxed{\dfrac{3}{6}}$", "0.5"), ("gsm8k", "... #### 1,600", "1600"),
                ("arithmetic", "19", "19"), ("math", r"\boxed{9^{9^{9^{9}}}}", "1"),
                ("arithmetic", "20", "19"), ("nope", "1", "1")]
    rewards, reasons = ray.get(pool.score.remote(requests))
    assert rewards == pytest.approx([1.1, 1.1, 1.1, 0.1, 0.1, 0.0])
    assert reasons[:5] == [""] * 5 and reasons[5].startswith("error: ValueError")

    pids = ray.get(pool.pids.remote())
    killed = ray.get(pool.kill_one_process.remote())
    assert killed in pids and killed not in ray.get(pool.pids.remote())
    rewards, reasons = ray.get(pool.score.remote(requests[:3] * 4))
    assert rewards == pytest.approx([1.1] * 12) and reasons == [""] * 12

    m = ray.get(pool.metrics.remote())
    assert m["processes_replaced"] == 1 and m["num_processes"] == 2 and m["items_scored"] == 18
    assert m["errors"] == 1 and m["timeouts"] == 0
    ray.get(pool.shutdown.remote())
    ray.kill(pool)
