"""The pure math of the algorithm: one module per concern, tensors in, tensors out.

- :mod:`rlvr.algo.advantages`  group rewards -> per-sample advantages (``ADVANTAGES``)
- :mod:`rlvr.algo.credit`      which tokens are targeted, and their weights (``CREDIT_CRITERIA``)
- :mod:`rlvr.algo.entropy_adv` entropy-shaped advantages
- :mod:`rlvr.algo.losses`      policy losses, KL estimators, aggregations (``POLICY_LOSSES``)
- :mod:`rlvr.algo.schedules`   scalars over training (``SCHEDULES``; pure Python, no torch)
- :mod:`rlvr.algo.token_stats` chunked per-token log-prob and entropy
- :mod:`rlvr.algo.offpolicy`   corrections for stale batches (``OFF_POLICY``: bypass, tis, mis)
- :mod:`rlvr.algo.overlong`    DAPO's soft overlong punishment
- :mod:`rlvr.algo.d3s`         D^3S sample selection (maximal advantage variance)
- :mod:`rlvr.algo.reinforce_ada` Reinforce-Ada's exit rules and balanced groups

Nothing here imports Ray, vLLM or ``torch.distributed``.  This package file
imports nothing either, so ``rlvr.algo.schedules`` loads without torch (the
Scheduler actor needs only it); import the submodule you use.
"""
