"""Weight sync transports: safetensors buckets through the object store (CPU path) and the
flattened per-dtype broadcast used for NCCL (exercised here over gloo with 2 processes)."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from rlvr.weight_sync import broadcast_buckets, from_buckets, state_dict_hash, to_buckets


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(64, 32, generator=g), "a.bias": torch.randn(64, generator=g),
            "emb": torch.randn(100, 16, generator=g).to(torch.bfloat16), "scalar": torch.tensor(3.0)}


def test_buckets_round_trip_and_respect_the_size_limit():
    sd = _state()
    buckets = to_buckets(sd, bucket_bytes=64 * 32 * 4)  # forces several buckets
    assert len(buckets) >= 2
    back = dict(from_buckets(buckets))
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k])
    assert state_dict_hash(back.items()) == state_dict_hash(sd.items())


def test_hash_sees_every_change_and_ignores_order():
    sd = _state()
    h = state_dict_hash(sd.items())
    assert h == state_dict_hash(reversed(list(sd.items())))
    changed = dict(sd)
    changed["a.bias"] = sd["a.bias"].clone()
    changed["a.bias"][7] += 1e-6
    assert state_dict_hash(changed.items()) != h
    renamed = {("b.bias" if k == "a.bias" else k): v for k, v in sd.items()}
    assert state_dict_hash(renamed.items()) != h


def _broadcast_worker(rank, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    sd = _state()
    names = [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]
    got = dict(broadcast_buckets(sd if rank == 0 else None, names, group=None, src=0))
    out.put((rank, state_dict_hash(got.items())))
    dist.destroy_process_group()


def test_broadcast_delivers_identical_tensors_to_every_rank():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    hashes = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert hashes[0] == hashes[1] == state_dict_hash(_state().items())
