"""A whole training run: set up, evaluate, loop over steps, checkpoint, resume.

Design: everything a run writes lives in ``logging.run_dir`` (config, metrics,
checkpoints, vLLM caches).  Checkpoints are atomic (see :mod:`rlvr.loop.checkpoint`)
and carry the scheduler state and the prompt sampler's cursor, so
``rlvr train ... resume=PATH`` continues exactly: same prompts, same sampling
seeds, same parameters.  :func:`build_run` is the one place a run is put together
(``rlvr train`` and the tests both use it); the actor classes come from the caller.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List

from rlvr.config import RLConfig, to_yaml
from rlvr.loop import checkpoint
from rlvr.loop.groups import ActorClasses


def _log(msg: str) -> None:
    print(f"[rlvr] {msg}", flush=True)


@dataclass
class Run:
    """Everything a training run holds between steps."""

    cfg: RLConfig
    run_dir: str
    model_path: str
    loop: Any  # rlvr.loop.step.RLLoop
    sampler: Any  # rlvr.data.PromptSampler
    eval_prompts: List[Any]
    num_train_prompts: int
    start_step: int = 0


def build_run(cfg: RLConfig, classes: ActorClasses) -> Run:
    """Model, data, Ray, the actor pools and the RL loop for ``cfg`` (resumed if ``checkpoint.resume``)."""
    from transformers import AutoTokenizer

    from rlvr.data import PromptSampler, load_dataset
    from rlvr.loop.groups import create_pools, start_ray
    from rlvr.loop.step import RLLoop
    from rlvr.train.tiny_model import ensure_model

    run_dir = os.path.abspath(cfg.logging.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    model_path = ensure_model(cfg.model, cfg.data.train.max_operand)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_prompts = load_dataset(cfg.data.train, cfg.data.on_bad_row)
    eval_prompts = load_dataset(cfg.data.eval, cfg.data.on_bad_row)[: cfg.eval.num_prompts]
    sampler = PromptSampler(train_prompts, cfg.data.prompts_per_step, cfg.data.seed)
    start_ray(cfg)
    loop = RLLoop(cfg, create_pools(cfg, classes, model_path, run_dir), tokenizer)
    r = Run(cfg, run_dir, model_path, loop, sampler, eval_prompts, len(train_prompts))
    if cfg.checkpoint.resume:
        r.start_step = resume(r, os.path.abspath(cfg.checkpoint.resume))
    return r


def run(cfg: RLConfig, classes: ActorClasses) -> Dict[str, float]:
    """Train ``cfg``; returns held-out accuracy before and after and the last step's metrics."""
    import ray

    t_setup = time.perf_counter()
    run_dir = os.path.abspath(cfg.logging.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(cfg))
    try:
        r = build_run(cfg, classes)
        _log(f"ready in {time.perf_counter() - t_setup:.1f}s: model {r.model_path}, {r.num_train_prompts} train / "
             f"{len(r.eval_prompts)} eval prompts, {cfg.rollout.num_workers} rollout, "
             f"{cfg.trainer.num_workers} trainer, {cfg.verifier.num_workers} verifier processes")
        return train_steps(r)
    finally:
        ray.shutdown()


def train_steps(r: Run) -> Dict[str, float]:
    """Evaluate, then step from ``r.start_step`` to the end, logging, evaluating and checkpointing."""
    from rlvr.loop.metrics import MetricsLogger, format_line
    from rlvr.loop.progress import progress
    from rlvr.loop.step import evaluate

    cfg, loop, start, total = r.cfg, r.loop, r.start_step, r.cfg.schedule.total_steps
    summary: Dict[str, float] = {}
    logger = MetricsLogger(cfg.logging, r.run_dir, resume_step=start if start else None)
    try:
        if start == 0:
            summary["eval/accuracy_before"] = acc = evaluate(loop, r.eval_prompts, cfg.eval.temperature)
            logger.log(0, {"eval/accuracy": acc})
            _log(f"held-out accuracy before training: {100 * acc:.1f}%")
        bar = progress(range(start, total), "train", enabled=cfg.logging.progress)
        for step in bar:
            metrics = loop.step(step, r.sampler.next_batch(), r.sampler.next_batch)
            done = step + 1
            if (cfg.eval.every and done % cfg.eval.every == 0) or done == total:
                metrics["eval/accuracy"] = evaluate(loop, r.eval_prompts, cfg.eval.temperature)
            logger.log(done, metrics)
            bar.write(format_line(done, total, metrics))
            summary.update(metrics)
            if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == total:
                save(r, done)
        if "eval/accuracy" in summary:
            summary["eval/accuracy_after"] = summary["eval/accuracy"]
            before = summary.get("eval/accuracy_before")
            _log(f"held-out accuracy after training: {100 * summary['eval/accuracy']:.1f}%"
                 + (f" (before: {100 * before:.1f}%)" if before is not None else ""))
    finally:
        logger.close()
    return summary


def save(r: Run, step: int) -> str:
    """Atomic checkpoint of trainers (sharded), scheduler, sampler cursor and config."""
    tmp = checkpoint.begin(r.run_dir, step)
    r.loop.pools.trainers.save(tmp)
    state = {
        "step": step,
        "scheduler": r.loop.pools.scheduler.state_dict(),
        "sampler": r.sampler.state_dict(),
        "config": to_yaml(r.cfg),
    }
    path = checkpoint.commit(tmp, state, r.cfg.checkpoint.keep)
    _log(f"checkpoint: {path}")
    return path


def resume(r: Run, path: str) -> int:
    """Load a checkpoint into the pools and the sampler; returns its step."""
    state = checkpoint.read_driver_state(path)
    r.loop.pools.trainers.load(path)
    r.loop.pools.scheduler.load_state_dict(state["scheduler"])
    r.sampler.load_state_dict(state["sampler"])
    r.loop.sync_weights()
    _log(f"resumed from {path} at step {state['step']}")
    return int(state["step"])
