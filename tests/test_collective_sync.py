"""The collective weight transport (``weight_sync.transport=collective``).

Pure: bucket plan/pack/unpack round trips per dtype, value for value; rank 0's staging casts to the
engines' dtype and hashes what it sends.  Processes without Ray: a stateless gloo group (vLLM's
``stateless_init_torch_distributed_process_group``) delivers every bucket, and a broadcast nobody
sends fails within the group's timeout.  Slow (Ray + vLLM on CPU, gloo): 2 engines and 2 FSDP ranks;
after every sync each engine's hash is the trainer's; a collective-synced engine generates exactly
like one loaded through the object store; a killed engine is reloaded and the group rebuilt; a stuck
sync fails naming ranks and address; and the per-sync seconds of both transports are printed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from helpers import run_ranks
from rlvr.rollout.collective import ALIGN, bucket_nbytes, pack_bucket, plan_buckets, unpack_bucket
from rlvr.rollout.transport import WEIGHT_TRANSPORTS, stage
from rlvr.rollout.weight_sync import state_dict_hash

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool]


def _mixed(seed=0):
    """Every dtype, odd byte sizes (3-byte uint8, 5-element fp16), a scalar and an empty tensor."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, dtype in enumerate(DTYPES):
        shape = (3 + i, 5) if i % 2 else (7 + i,)
        if dtype.is_floating_point:
            sd[f"t{i}.{dtype}"] = (torch.randn(shape, generator=g) * 100).to(dtype)
        elif dtype == torch.bool:
            sd[f"t{i}.{dtype}"] = torch.rand(shape, generator=g) > 0.5
        else:
            sd[f"t{i}.{dtype}"] = torch.randint(0, 250, shape, generator=g).to(dtype)
    sd["odd.uint8"] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    return sd


def _specs(sd):
    return [(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in sd.items()]


def _round_trip(sd, bucket_bytes):
    plan = plan_buckets(_specs(sd), bucket_bytes)
    back = {}
    for slots in plan:
        back.update(unpack_bucket(pack_bucket(sd, slots).clone(), slots))
    return plan, back


@pytest.mark.parametrize("bucket_bytes", [1, 64, 1 << 20])
def test_buckets_round_trip_every_dtype_exactly(bucket_bytes):
    sd = _mixed()
    plan, back = _round_trip(sd, bucket_bytes)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    assert state_dict_hash(back.items()) == state_dict_hash(sd.items())
    assert len(plan) == (len(sd) if bucket_bytes == 1 else 1 if bucket_bytes == 1 << 20 else len(plan))


def test_bucket_layout_is_aligned_and_bounded():
    sd = _mixed()
    plan = plan_buckets(_specs(sd), 64)
    assert 1 < len(plan) < len(sd)
    for slots in plan:
        assert all(s.offset % ALIGN == 0 for s in slots)
        ends = [s.offset + s.nbytes for s in slots]
        assert all(a <= b.offset for a, b in zip(ends, slots[1:]))  # no overlap
        assert len(slots) == 1 or bucket_nbytes(slots[:-1]) <= 64  # only a lone big tensor passes the limit
    sizes = {s.name: s.nbytes for slots in plan for s in slots}
    assert sizes == {k: v.numel() * v.element_size() for k, v in sd.items()}


def test_pack_refuses_a_tensor_that_does_not_match_the_plan():
    sd = _mixed()
    plan = plan_buckets(_specs(sd), 1 << 20)
    sd["scalar"] = torch.tensor(2.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="scalar: planned float32"):
        pack_bucket(sd, plan[0])


def test_stage_sends_the_engine_dtype_and_hashes_what_it_sends():
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(33, 7, generator=g), "b": torch.randn(7, generator=g), "step": torch.tensor([3])}
    staged = stage(sd, "bfloat16", bucket_bytes=128, device="cpu", gather_s=0.5)
    back = {k: v for buf, slots in zip(staged.buffers, staged.plan) for k, v in unpack_bucket(buf, slots)}
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], sd["w"].to(torch.bfloat16))
    assert back["step"].dtype == torch.int64 and torch.equal(back["step"], sd["step"])  # integers keep theirs
    assert staged.hash == state_dict_hash(back.items()) != state_dict_hash(sd.items())
    assert staged.metrics["gather_s"] == 0.5 and staged.metrics["pack_s"] > 0
    assert staged.metrics["bytes"] == sum(b.numel() for b in staged.buffers) >= (33 * 7 + 7) * 2 + 8


def test_the_transport_registry_matches_the_config():
    from rlvr import config

    assert set(WEIGHT_TRANSPORTS) == set(config.WEIGHT_TRANSPORTS)
    with pytest.raises(ValueError, match="unknown weight_sync.transport 'nccl'; valid choices: object_store"):
        WEIGHT_TRANSPORTS.get("nccl")


def test_weight_sync_config():
    from rlvr.config import ConfigError, load_config

    cfg = load_config([], [])
    assert (cfg.weight_sync.transport, cfg.weight_sync.bucket_mb) == ("object_store", 256.0)
    with pytest.raises(ConfigError, match="valid choices: object_store, collective"):
        load_config([], ["weight_sync.transport=nccl"])
    with pytest.raises(ConfigError, match="bucket_mb"):
        load_config([], ["weight_sync.bucket_mb=0"])
    with pytest.raises(ConfigError, match="whole GPUs"):
        load_config([], ["weight_sync.transport=collective", "rollout.num_gpus=0.5", "trainer.num_gpus=1"])
    load_config([], ["weight_sync.transport=collective", "rollout.num_gpus=1", "trainer.num_gpus=1"])


# --------------------------------------------------------------------------- a stateless group, no Ray
def _group_worker(rank, port, out):
    from rlvr.rollout.collective import WeightGroup

    group = WeightGroup("127.0.0.1", port, rank, 3, "gloo", timeout_s=3)
    sd = _mixed()
    staged = stage(sd, "float16", bucket_bytes=96, device="cpu")
    if rank == 0:
        group.send(staged.buffers)
        out.put((rank, staged.hash))
        time.sleep(6)  # alive but silent (a peer that exits is noticed at once: "Connection closed")
        return
    timer = {}
    got = dict(group.receive(staged.plan, timer))  # the plan is what the Ray call would carry
    result = (state_dict_hash(got.items()), timer["transfer_s"] > 0)
    t0 = time.perf_counter()
    try:  # rank 0 sends nothing more: the group's timeout ends the wait
        list(group.receive(staged.plan[:1], timer))
        late = "no error"
    except RuntimeError as exc:
        late = f"{time.perf_counter() - t0:.1f}s {str(exc)[:200]}"
    out.put((rank, (*result, late)))


def test_a_stateless_gloo_group_delivers_every_bucket_and_times_out():
    got = run_ranks(_group_worker, 3)
    for rank in (1, 2):
        received_hash, timed, late = got[rank]
        assert received_hash == got[0] and timed
        assert "Timed out" in late and 2.5 < float(late.split("s ")[0]) < 10, late


# --------------------------------------------------------------------------- the loop on Ray (gloo)
@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    import ray

    from rlvr.config import load_config
    from rlvr.loop.run import build_run
    from workers import ACTORS

    run_dir = tmp_path_factory.mktemp("collective")
    cfg = load_config([str(ROOT / "configs/quickstart_cpu.yaml")], [
        f"logging.run_dir={run_dir}", "schedule.total_steps=10", "data.prompts_per_step=4",
        "rollout.num_workers=2", "rollout.num_cpus=0.25", "rollout.num_threads=1", "trainer.num_workers=2",
        "weight_sync.transport=collective", "weight_sync.bucket_mb=1", "weight_sync.timeout_s=120",
    ])
    run = build_run(cfg, ACTORS)
    rl = run.loop
    rl.sampler, rl.model_path, rl.history = run.sampler, run.model_path, []
    yield rl
    ray.shutdown()


def _pid(actor):
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _step(rl):
    metrics = rl.step(len(rl.history), rl.sampler.next_batch)
    rl.history.append(metrics)
    return metrics


def _trainer_hash(rl) -> str:
    """Rank 0's hash of the weights it holds now, in the engines' dtype."""
    return rl.pools.trainers.export_weights(1 << 30, rl.cfg.rollout.dtype).hash()


@pytest.mark.slow
def test_every_collective_sync_loads_exactly_what_trainer_rank_0_sent(loop):
    from rlvr.rollout.transport import CollectiveTransport

    transport = loop.pools.transport
    assert isinstance(transport, CollectiveTransport) and transport.backend == "gloo"
    hashes = []
    for _ in range(3):
        _step(loop)  # sync_weights raises on any engine whose hash differs from rank 0's
        hashes.append(_trainer_hash(loop))
        assert loop.pools.rollouts.weights_hashes() == [hashes[-1]] * 2
        assert loop.history[-1]["rollout/logprob_mismatch"] < 1e-4  # float32 engines vs float32 trainer
    assert len(set(hashes)) == 3  # the weights changed every step, and every change arrived
    address = transport.address
    m = loop.sync_weights()
    assert transport.address == address  # one group for every sync
    n_bytes = sum(v.numel() * v.element_size() for v in _state_of(loop).values())
    assert n_bytes <= m["sync/bytes"] < n_bytes + 16 * len(_state_of(loop))  # + alignment only
    assert m["sync/bytes_per_s"] == pytest.approx(m["sync/bytes"] / m["sync/transfer_s"])
    for key in ("gather_s", "pack_s", "transfer_s", "load_s", "total_s"):
        assert 0 < m[f"sync/{key}"] <= m["sync/total_s"], key


def _state_of(rl):
    import ray

    from rlvr.rollout.weight_sync import from_buckets

    if not hasattr(rl, "_exported"):
        rl._exported = dict(from_buckets(ray.get(rl.pools.trainers.export_weights(1 << 30).buckets)))
    return rl._exported


@pytest.mark.slow
def test_a_synced_engine_generates_like_one_loaded_through_the_object_store(loop):
    import ray
    from safetensors.torch import load_file

    from rlvr.data import encode_prompts
    from rlvr.rollout.weight_sync import to_buckets

    synced, reloaded = loop.pools.rollouts.actors
    original = load_file(os.path.join(loop.model_path, "model.safetensors"))
    before = ray.get(reloaded.load_weights.remote(to_buckets(original)))  # other weights first
    exported = loop.pools.trainers.export_weights(1 << 30, loop.cfg.rollout.dtype)
    after = ray.get(reloaded.load_weights.remote(exported.buckets))  # then the trainer's, by object store
    assert before != after == ray.get(synced.weights_hash.remote()) == exported.hash()
    ids = encode_prompts(loop.tokenizer, [p.prompt for p in loop.sampler.next_batch()], False)
    seeds = list(range(len(ids)))
    a, b = ray.get([synced.generate.remote(ids, 1, 0.0, seeds), reloaded.generate.remote(ids, 1, 0.0, seeds)])
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.rollout_logprob for s in a] == [s.rollout_logprob for s in b]
    assert sum(len(s.response_ids) for s in a) > len(ids)


@pytest.mark.slow
def test_a_killed_engine_is_reloaded_through_the_object_store_and_the_group_rebuilt(loop):
    rollouts, transport = loop.pools.rollouts, loop.pools.transport
    worker, restarts, address = rollouts.actors[1], rollouts.restarts, transport.address
    old_pid = _pid(worker)
    os.kill(old_pid, signal.SIGKILL)  # the next generate restarts it and reloads it by object store
    for _ in range(2):
        m = _step(loop)
        assert loop.pools.rollouts.weights_hashes() == [_trainer_hash(loop)] * 2
        assert m["rollout/logprob_mismatch"] < 1e-4
    assert _pid(worker) != old_pid and rollouts.restarts == restarts + 1
    assert transport.built_for == rollouts.restarts and transport.address != address  # rebuilt once
    assert "sync/fallback" not in loop.sync_weights()


@pytest.mark.slow
def test_a_sync_that_cannot_finish_fails_naming_the_ranks_and_the_address(loop):
    import ray

    trainers, rollouts, transport = loop.pools.trainers, loop.pools.rollouts, loop.pools.transport
    transport.connect(trainers, rollouts)  # warm (the first join imports vLLM's distributed utils)
    transport.timeout_s = 5.0
    try:
        transport.connect(trainers, rollouts)  # a group whose every wait gives up after 5 s
        host, port = transport.address
        staged = trainers.stage_weights(transport.bucket_bytes, transport.dtype, transport.backend)
        refs = [ray.put(0.0)] + rollouts.receive_weights_async(staged["plan"])  # rank 0 never sends
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError) as err:
            transport.wait(refs, "weight broadcast")
        assert time.perf_counter() - t0 < 30
    finally:
        transport.timeout_s = loop.cfg.weight_sync.timeout_s
    msg = str(err.value)
    assert f"weight broadcast over the gloo group at {host}:{port} failed" in msg
    assert "engine 0 (group ranks 1..1)" in msg and "engine 1 (group ranks 2..2)" in msg, msg
    assert transport.address is None  # a broken group is rebuilt before the next sync
    assert rollouts.weights_hashes() == ["", ""]  # an interrupted load never passes for a sent hash
    rollouts.load_weights(trainers.export_weights(1 << 30, transport.dtype).buckets)  # what a run would redo
    _step(loop)
    assert rollouts.weights_hashes() == [_trainer_hash(loop)] * 2


@pytest.mark.slow
def test_sync_seconds_per_transport(loop, capsys):
    """Not a benchmark: the seconds of a few syncs of the quickstart model with each transport."""
    from rlvr.rollout.transport import ObjectStoreTransport

    trainers, rollouts = loop.pools.trainers, loop.pools.rollouts
    seconds, breakdown = {}, {}
    for name, transport in (("object_store", ObjectStoreTransport(loop.cfg)), ("collective", loop.pools.transport)):
        seconds[name] = []
        for _ in range(4):
            t0 = time.perf_counter()
            result = transport.sync(trainers, rollouts)
            seconds[name].append(time.perf_counter() - t0)
            assert result.loaded == [result.sent_hash] * 2
        breakdown[name] = result.metrics
    with capsys.disabled():
        mb = breakdown["collective"]["sync/bytes"] / 2**20
        print(f"\n[sync] quickstart model ({mb:.1f} MiB float32), 2 engines, 2 trainer ranks, gloo on CPU")
        for name, runs in seconds.items():
            print(f"[sync] {name:12s} per sync: " + ", ".join(f"{s * 1e3:.0f} ms" for s in runs))
        m = breakdown["collective"]
        print("[sync] collective breakdown (last): " + ", ".join(
            f"{k} {m[f'sync/{k}_s'] * 1e3:.1f} ms" for k in ("connect", "gather", "pack", "transfer", "load", "total"))
              + f", {m['sync/bytes_per_s'] / 2**20:.0f} MiB/s")
