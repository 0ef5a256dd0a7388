"""The RL loop: the step, the run around it, the actor pools, checkpoints and run output.

- :mod:`rlvr.loop.step`       ``RLLoop.step``: generate -> verify -> advantages -> credit -> train -> sync
- :mod:`rlvr.loop.run`        ``build_run`` / ``run``: set up, evaluate, step, checkpoint, resume
- :mod:`rlvr.loop.pipeline`   k-step asynchronous rollouts (``rollout.max_staleness``), pool busy/overlap
- :mod:`rlvr.loop.groups`     the rollout and reward pools (fan-out, retries, restarts); all pools together
- :mod:`rlvr.loop.trainer_group` the trainer ranks and the Scheduler client
- :mod:`rlvr.loop.placement`  each pool's Ray options, restarts, Ray start-up
- :mod:`rlvr.loop.signals`    SIGINT/SIGTERM: finish the step, checkpoint, exit 130/143
- :mod:`rlvr.loop.recovery`   rebuilding the trainer group after a lost rank, inside the run
- :mod:`rlvr.loop.checkpoint` atomic run checkpoints and their consolidation into HF directories
- :mod:`rlvr.loop.metrics`    ``metrics.jsonl``, TensorBoard, W&B, MLflow; the step line
- :mod:`rlvr.loop.progress`   the progress bar
"""
