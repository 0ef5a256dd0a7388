"""Shared builders for tests: a tiny random Qwen2 checkpoint and random ragged samples."""

from __future__ import annotations

import os

import torch

from rlvr.rollout.sample import Sample


def tiny_checkpoint(path: str, vocab: int = 32, seed: int = 0) -> str:
    """A randomly initialised 2-layer Qwen2 (head size 32, as vLLM's CPU kernels need) and a char tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    chars = list("0123456789+-=*/ abcdefghijklmnop")[: vocab - 2]
    table = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>").save_pretrained(path)
    cfg = Qwen2Config(vocab_size=len(table), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      eos_token_id=1, pad_token_id=0, bos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


def random_samples(n: int, vocab: int = 32, seed: int = 0, group_size: int = 4) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p_len = int(torch.randint(2, 7, (1,), generator=g))
        r_len = int(torch.randint(1, 10, (1,), generator=g))
        out.append(Sample(prompt_ids=torch.randint(2, vocab, (p_len,), generator=g).tolist(),
                          response_ids=torch.randint(1, vocab, (r_len,), generator=g).tolist(),
                          rollout_logprob=[0.0] * r_len, group=i // group_size,
                          reward=float(torch.rand(1, generator=g) > 0.5)))
    return out


def run_ranks(target, world: int, timeout_s: float = 180) -> dict:
    """Run ``target(rank, port, queue)`` in ``world`` spawned processes; ``{rank: what it put}``."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=timeout_s) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return got


def dapo_eq13(length: float, max_len: int, cache: int, penalty: float) -> float:
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13) case by case, times ``penalty``."""
    if length <= max_len - cache:
        return 0.0
    if length <= max_len:
        return penalty * ((max_len - cache) - length) / cache
    return -penalty
