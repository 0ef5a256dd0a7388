"""Weight sync: safetensors buckets through the object store (CPU path), hashes that agree across
transports, and the one-gather-per-bucket export of FSDP2 shards (3 gloo ranks, uneven and empty
shards).  The collective transport has its own tests in ``test_collective_sync.py``."""

from __future__ import annotations

import torch

from helpers import run_ranks
from rlvr.rollout.weight_sync import from_buckets, state_dict_hash, to_buckets


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


def test_buckets_store_tied_tensors_under_both_names():
    sd = _state()
    sd["tied"] = sd["a.weight"]  # e.g. lm_head.weight = embed_tokens.weight
    back = dict(from_buckets(to_buckets(sd, bucket_bytes=1 << 30)))
    assert torch.equal(back["tied"], sd["a.weight"]) and torch.equal(back["a.weight"], sd["a.weight"])


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


def test_both_transports_hash_the_same_weights_alike_in_the_engine_dtype():
    """A restarted engine is loaded through the object store while the others got the broadcast: the
    hashes agree because both transports send (and hash) the engines' dtype."""
    from rlvr.rollout.transport import stage

    sd = {k: v.float() for k, v in _state().items()}
    bf16 = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    through_store = dict(from_buckets(to_buckets(bf16, bucket_bytes=1 << 10)))
    assert stage(sd, "bfloat16", 1 << 10, "cpu").hash == state_dict_hash(through_store.items())
    assert stage(sd, "float32", 1 << 10, "cpu").hash == state_dict_hash(sd.items()) != state_dict_hash(bf16.items())


class _Odd(torch.nn.Module):
    """Row counts that do not divide by 3 (one has fewer rows than ranks), a tied weight, a buffer."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.emb = torch.nn.Embedding(7, 5)
        self.emb.weight.data = torch.randn(7, 5, generator=g)
        self.block = torch.nn.Linear(5, 2)
        self.block.weight.data, self.block.bias.data = torch.randn(2, 5, generator=g), torch.randn(2, generator=g)
        self.head = torch.nn.Linear(5, 7, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("scale", torch.tensor([2.0, 3.0]))


def _gather_worker(rank, port, out):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from rlvr.train.parallel import gather_full_state_dict

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    model = _Odd()
    mesh = init_device_mesh("cpu", (3,))
    fully_shard(model.block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    ours = gather_full_state_dict(model, bucket_bytes=64)  # several buckets
    dcp = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    as_numpy = lambda sd: {k: (v.dtype, v.numpy().copy()) for k, v in sd.items()}  # noqa: E731 (by value)
    out.put((rank, None if ours is None else (as_numpy(ours), as_numpy(dcp))))
    dist.destroy_process_group()


def test_flat_gather_equals_the_dcp_full_state_dict():
    """One gather per bucket of FSDP2 shards == DCP's per-parameter full state dict, bit for bit."""
    got = run_ranks(_gather_worker, 3)
    assert got[1] is None and got[2] is None
    ours, dcp = got[0]
    reference = _Odd().state_dict()
    assert set(ours) == set(dcp) == set(reference)
    for k in reference:
        assert ours[k][0] == torch.float32, k
        assert (ours[k][1] == dcp[k][1]).all() and (ours[k][1] == reference[k].numpy()).all(), k
