"""A whole training run: set up, evaluate, loop over steps, checkpoint, resume.

Design: everything a run writes lives in ``logging.run_dir`` (config, metrics,
checkpoints, vLLM caches).  Checkpoints are atomic (see :mod:`rlvr.checkpoint`)
and carry the scheduler state and the prompt sampler's cursor, so
``rlvr train ... resume=PATH`` continues exactly: same prompts, same sampling
seeds, same parameters.
"""

from __future__ import annotations

import os
import time
from typing import Dict

from rlvr import checkpoint
from rlvr.config import RLConfig, to_yaml


def _log(msg: str) -> None:
    print(f"[rlvr] {msg}", flush=True)


def run(cfg: RLConfig) -> Dict[str, float]:
    """Train ``cfg``; returns held-out accuracy before and after and the last step's metrics."""
    import ray
    from transformers import AutoTokenizer

    from rlvr.data import PromptSampler, load_dataset
    from rlvr.driver import RLLoop, evaluate
    from rlvr.metrics import MetricsLogger, format_line
    from rlvr.progress import progress
    from rlvr.runtime import create_actors, start_ray
    from rlvr.tiny_model import ensure_model

    run_dir = os.path.abspath(cfg.logging.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(cfg))
    t_setup = time.perf_counter()
    model_path = ensure_model(cfg.model, cfg.data.train.max_operand)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_prompts = load_dataset(cfg.data.train, cfg.data.on_bad_row)
    eval_prompts = load_dataset(cfg.data.eval, cfg.data.on_bad_row)[: cfg.eval.num_prompts]
    sampler = PromptSampler(train_prompts, cfg.data.prompts_per_step, cfg.data.seed)
    start_ray(cfg)
    actors = create_actors(cfg, model_path, run_dir)
    loop = RLLoop(cfg, actors, tokenizer)
    start = _resume(cfg, loop, sampler) if cfg.checkpoint.resume else 0
    _log(f"ready in {time.perf_counter() - t_setup:.1f}s: model {model_path}, {len(train_prompts)} train / "
         f"{len(eval_prompts)} eval prompts, {cfg.rollout.num_workers} rollout, {cfg.trainer.num_workers} trainer, "
         f"{cfg.verifier.num_workers} verifier processes")

    total = cfg.schedule.total_steps
    summary: Dict[str, float] = {}
    logger = MetricsLogger(cfg.logging, run_dir, resume_step=start if start else None)
    try:
        if start == 0:
            summary["eval/accuracy_before"] = acc = evaluate(loop, eval_prompts, cfg.eval.temperature)
            logger.log(0, {"eval/accuracy": acc})
            _log(f"held-out accuracy before training: {100 * acc:.1f}%")
        bar = progress(range(start, total), "train", enabled=cfg.logging.progress)
        for step in bar:
            metrics = loop.step(step, sampler.next_batch(), sampler.next_batch)
            done = step + 1
            if (cfg.eval.every and done % cfg.eval.every == 0) or done == total:
                metrics["eval/accuracy"] = evaluate(loop, eval_prompts, cfg.eval.temperature)
            logger.log(done, metrics)
            bar.write(format_line(done, total, metrics))
            summary.update(metrics)
            if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == total:
                save(cfg, loop, sampler, done)
        if "eval/accuracy" in summary:
            summary["eval/accuracy_after"] = summary["eval/accuracy"]
            _log(f"held-out accuracy after training: {100 * summary['eval/accuracy']:.1f}%"
                 + (f" (before: {100 * summary['eval/accuracy_before']:.1f}%)" if "eval/accuracy_before" in summary else ""))
    finally:
        logger.close()
        ray.shutdown()
    return summary


def save(cfg: RLConfig, loop, sampler, step: int) -> str:
    """Atomic checkpoint of trainers (sharded), scheduler, sampler cursor and config."""
    tmp = checkpoint.begin(os.path.abspath(cfg.logging.run_dir), step)
    loop.call([t.save.remote(tmp) for t in loop.actors.trainers])
    state = {
        "step": step,
        "scheduler": loop.call(loop.actors.scheduler.state_dict.remote()),
        "sampler": sampler.state_dict(),
        "config": to_yaml(cfg),
    }
    path = checkpoint.commit(tmp, state, cfg.checkpoint.keep)
    _log(f"checkpoint: {path}")
    return path


def _resume(cfg: RLConfig, loop, sampler) -> int:
    path = os.path.abspath(cfg.checkpoint.resume)
    state = checkpoint.read_driver_state(path)
    loop.call([t.load.remote(path) for t in loop.actors.trainers])
    loop.call(loop.actors.scheduler.load_state_dict.remote(state["scheduler"]))
    sampler.load_state_dict(state["sampler"])
    loop.sync_weights()
    _log(f"resumed from {path} at step {state['step']}")
    return int(state["step"])
