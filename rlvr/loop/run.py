"""A whole training run: set up, evaluate, loop over steps, checkpoint, resume, stop on a signal.

Design: everything a run writes lives in ``logging.run_dir`` (config, metrics,
checkpoints, vLLM caches), and a run directory holds one run: :func:`prepare_run_dir`
refuses (before Ray starts) to start a second run into it unless told to continue it
(``resume=auto``) or to move it aside (``--fresh``).  Checkpoints are atomic (see
:mod:`rlvr.loop.checkpoint`) and carry the scheduler state and the prompt sampler's cursor,
so ``rlvr train ... resume=PATH`` continues exactly: same prompts, same sampling seeds,
same parameters.  :func:`build_run` is the one place a run is put together (``rlvr train``
and the tests both use it); the actor classes come from the caller.

SIGINT/SIGTERM (:class:`StopSignals`) never cost finished work: the step in flight ends,
the last completed step is checkpointed at that step boundary (so the resumed run is
exactly the uninterrupted one), and :class:`Interrupted` carries the checkpoint out to the
launcher.  A signal during set-up or an evaluation abandons it; a second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from rlvr.config import RLConfig, to_yaml
from rlvr.loop import checkpoint
from rlvr.loop.checkpoint import RunDirError
from rlvr.loop.groups import ActorClasses
from rlvr.loop.signals import Interrupted, StopSignals


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
    skipped_rows: int = 0  # malformed or over-long rows left out of train and eval
    resumed_from: Optional[str] = None  # the checkpoint of ``start_step``
    classes: Optional[ActorClasses] = None  # the Ray shells: a lost trainer rank's group is created again
    initial_sampler: Optional[Dict[str, Any]] = None  # the sampler at step 0 (recovery without a checkpoint)


# --------------------------------------------------------------------------- the run directory
def resume_path(cfg: RLConfig) -> Optional[str]:
    """The checkpoint ``checkpoint.resume`` names: a path, the newest complete one of the run dir
    (``auto``; None when it has none), or None."""
    resume = cfg.checkpoint.resume
    if resume == "auto":
        return checkpoint.latest(os.path.abspath(cfg.logging.run_dir))
    return os.path.abspath(os.path.expanduser(resume)) if resume else None


def prepare_run_dir(cfg: RLConfig, fresh: bool = False) -> Optional[Tuple[str, int]]:
    """Before Ray: make sure ``logging.run_dir`` receives this run only; ``(checkpoint, step)`` to resume from.

    A run dir that holds a run (``metrics.jsonl`` or checkpoints) is refused unless this run
    continues it (``resume=auto``, or ``resume=`` one of its checkpoints) or ``fresh`` moves it
    aside to ``<run_dir>.old-<time>``.
    """
    run_dir, resume = os.path.abspath(cfg.logging.run_dir), cfg.checkpoint.resume
    path, held = resume_path(cfg), checkpoint.run_contents(run_dir)
    own = path is not None and path.startswith(checkpoint.checkpoint_root(run_dir) + os.sep)
    if fresh and (resume == "auto" or own):
        raise RunDirError(f"--fresh moves {run_dir} aside, so resume={resume} cannot continue it: give one of them")
    if fresh and held:
        _log(f"--fresh: moved the earlier run to {checkpoint.move_aside(run_dir)}")
    elif held and resume != "auto" and not own:
        what = f"resume={resume} is not one of its checkpoints" if resume else "this would mix two runs"
        raise RunDirError(f"logging.run_dir={run_dir} already holds a run ({', '.join(held)}) and {what}: "
                          f"continue it with resume=auto, or start over with --fresh "
                          f"(moves it to {run_dir}.old-<timestamp>)")
    if resume == "auto" and path is not None and checkpoint.read_driver_state(path).get("config"):
        saved = checkpoint.saved_config(path).model.path
        if saved != cfg.model.path:
            raise RunDirError(f"resume=auto would continue {path}, trained from model.path={saved}, with "
                              f"model.path={cfg.model.path}: use the same model, or a new logging.run_dir")
    if resume == "auto" and path is None:
        _log(f"resume=auto: no checkpoint in {checkpoint.checkpoint_root(run_dir)}; starting at step 0"
             + (" (the earlier metrics rows are replaced)" if held else ""))
    return (path, int(checkpoint.read_driver_state(path)["step"])) if path else None


# --------------------------------------------------------------------------- set-up
def read_prompts(cfg: RLConfig) -> Tuple[List[Any], List[Any], int]:
    """(train, eval, malformed rows skipped): every prompt of both datasets, before any tokenizer."""
    from rlvr.data import BadRows, load_dataset

    bad = BadRows()
    return (load_dataset(cfg.data.train, cfg.data.on_bad_row, bad),
            load_dataset(cfg.data.eval, cfg.data.on_bad_row, bad), bad.skipped)


def fit_prompts(cfg: RLConfig, tokenizer: Any, prompts: List[Any], source: str) -> Tuple[List[Any], int]:
    """(kept, skipped): the prompts that leave ``rollout.max_tokens`` of room in ``rollout.max_model_len``."""
    from rlvr.data import drop_long_prompts, encode_prompts

    def n_tokens(text: str) -> int:
        return len(encode_prompts(tokenizer, [text], cfg.data.chat_template)[0])

    limit = cfg.rollout.max_model_len - cfg.rollout.max_tokens
    return drop_long_prompts(prompts, n_tokens, limit, cfg.data.on_bad_row, source=source)


def build_run(cfg: RLConfig, classes: ActorClasses, stop: Optional[StopSignals] = None) -> Run:
    """Model, data, Ray, the actor pools and the RL loop for ``cfg`` (resumed if ``checkpoint.resume``).

    Every bad row is found (skipped or raised, per ``data.on_bad_row``) before Ray starts.  ``stop``'s
    handlers are put back as soon as ``ray.init`` has set its own (Python and C++) SIGTERM handlers.
    """
    from transformers import AutoTokenizer

    from rlvr.data import PromptSampler
    from rlvr.loop.groups import create_pools
    from rlvr.loop.placement import start_ray
    from rlvr.loop.step import RLLoop
    from rlvr.train.tiny_model import ensure_model

    run_dir = os.path.abspath(cfg.logging.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    train_prompts, eval_prompts, skipped = read_prompts(cfg)  # a broken file fails before the model is built
    model_path = ensure_model(cfg.model, cfg.data.train.max_operand)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_prompts, long_train = fit_prompts(cfg, tokenizer, train_prompts, "data.train")
    eval_prompts, long_eval = fit_prompts(cfg, tokenizer, eval_prompts, "data.eval")
    sampler = PromptSampler(train_prompts, cfg.data.prompts_per_step, cfg.data.seed)
    start_ray(cfg)
    if stop is not None:
        stop.install()
    loop = RLLoop(cfg, create_pools(cfg, classes, model_path, run_dir), tokenizer)
    r = Run(cfg, run_dir, model_path, loop, sampler, eval_prompts[: cfg.eval.num_prompts], len(train_prompts),
            skipped_rows=skipped + long_train + long_eval, classes=classes,
            initial_sampler=sampler.state_dict())
    path = resume_path(cfg)
    if path:
        r.start_step, r.resumed_from = resume(r, path), path
    return r


def run(cfg: RLConfig, classes: ActorClasses) -> Dict[str, float]:
    """Train ``cfg``; returns held-out accuracy before and after and the last step's metrics.

    Raises :class:`Interrupted` (after saving and shutting Ray down) on SIGINT/SIGTERM.
    """
    import ray

    stop = StopSignals()
    stop.install()
    t_setup = time.perf_counter()
    run_dir = os.path.abspath(cfg.logging.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(cfg))
    try:
        with stop.abandonable():
            r = _build_run(cfg, classes, stop)
        stop.install()  # after ray.init and the actors
        skipped = f" ({r.skipped_rows} bad rows skipped)" if r.skipped_rows else ""
        _log(f"ready in {time.perf_counter() - t_setup:.1f}s: model {r.model_path}, {r.num_train_prompts} train / "
             f"{len(r.eval_prompts)} eval prompts{skipped}, {cfg.rollout.num_workers} rollout, "
             f"{cfg.trainer.num_workers} trainer, {cfg.verifier.num_actors * cfg.verifier.num_workers} verifier "
             "processes")
        return train_steps(r, stop)
    finally:
        stop.abandon = False  # a signal now only waits for the shutdown; a second one exits at once
        ray.shutdown()
        stop.restore()


def _build_run(cfg: RLConfig, classes: ActorClasses, stop: StopSignals) -> Run:
    try:
        return build_run(cfg, classes, stop)
    except SystemExit as exc:  # Ray's own driver SIGTERM handler ran, inside ray.init, before ours is back
        if exc.code == signal.SIGTERM:
            raise Interrupted(signal.SIGTERM) from None
        raise


def train_steps(r: Run, stop: Optional[StopSignals] = None) -> Dict[str, float]:
    """Evaluate, then step from ``r.start_step`` to the end, logging, evaluating and checkpointing.

    After a stop signal the step in flight ends, the last completed step is checkpointed (unless
    it just was) and :class:`Interrupted` is raised with that checkpoint.  A lost trainer rank is
    recovered from the last checkpoint (:class:`rlvr.loop.recovery.Recovery`): the lost steps are
    trained again and their metrics rows replaced.
    """
    from rlvr.loop.metrics import MetricsLogger
    from rlvr.loop.progress import progress
    from rlvr.loop.recovery import Recovery

    stop = stop or StopSignals()
    stop.abandon = False
    cfg, start, total = r.cfg, r.start_step, r.cfg.schedule.total_steps
    summary: Dict[str, float] = {}
    done, saved = start, r.resumed_from  # the last completed step and the checkpoint of ``done``, if any
    rec = Recovery(cfg.checkpoint.max_recoveries, r.resumed_from, start)
    logger = MetricsLogger(cfg.logging, r.run_dir, resume_step=_first_new_row(r))
    bar = progress(total - start, "train", enabled=cfg.logging.progress)
    try:
        if start == 0:
            summary["eval/accuracy_before"] = acc = _evaluate(r, stop)
            logger.log(0, {"eval/accuracy": acc})
            _log(f"held-out accuracy before training: {100 * acc:.1f}%")
        while done < total and stop.signum is None:
            try:
                metrics, saved = _train_step(r, done, stop, logger, bar, rec)
            except Exception:  # a lost trainer rank is recovered, anything else goes on up
                ranks = [] if stop.signum is not None else rec.lost_ranks(r.loop.pools.trainers)
                if not ranks:
                    raise
                resumed = rec.recover(ranks, done, lambda path: _restore(r, path))
                logger.close()  # reopened at the restore point: the lost steps' rows go
                logger = MetricsLogger(cfg.logging, r.run_dir, resume_step=resumed + 1)
                bar.update(resumed - done)
                done, saved = resumed, rec.checkpoint
                continue
            done += 1
            summary.update(metrics)
        if stop.signum is not None:
            raise Interrupted(stop.signum, done, saved or (save(r, done) if done > 0 else None))
        if "eval/accuracy" in summary:
            summary["eval/accuracy_after"] = summary["eval/accuracy"]
            before = summary.get("eval/accuracy_before")
            _log(f"held-out accuracy after training: {100 * summary['eval/accuracy']:.1f}%"
                 + (f" (before: {100 * before:.1f}%)" if before is not None else ""))
    finally:
        bar.close()
        logger.close()
    return summary


def _train_step(r: Run, step: int, stop: StopSignals, logger: Any, bar: Any,
                rec: Any) -> Tuple[Dict[str, float], Optional[str]]:
    """Train step ``step + 1``, evaluate when due, log it, checkpoint when due; (metrics, its checkpoint)."""
    from rlvr.loop.metrics import format_line

    cfg, total = r.cfg, r.cfg.schedule.total_steps
    metrics = r.loop.step(step, r.sampler.next_batch)
    done, saved = step + 1, None
    if ((cfg.eval.every and done % cfg.eval.every == 0) or done == total) and stop.signum is None:
        acc = _evaluate(r, stop, step_done=True)
        metrics.update({} if acc is None else {"eval/accuracy": acc})
    metrics.update(rec.take_fields())
    logger.log(done, metrics)
    bar.write(format_line(done, total, metrics))
    bar.update(1)
    if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == total:
        saved = save(r, done)
        rec.saved(saved, done)
    return metrics, saved


def _first_new_row(r: Run) -> Optional[int]:
    """The first metrics step this process writes when it continues a run (older rows are kept), else None."""
    if r.start_step:
        return r.start_step + 1  # the row of the checkpoint's own step stays
    return 0 if r.cfg.checkpoint.resume == "auto" else None  # auto without a checkpoint: start over in place


def _evaluate(r: Run, stop: StopSignals, step_done: bool = False) -> Optional[float]:
    """Held-out accuracy; a signal abandons it (raising :class:`Interrupted` before the first step,
    giving None after a completed step, whose checkpoint comes next)."""
    from rlvr.loop.step import evaluate

    try:
        with stop.abandonable():
            return evaluate(r.loop, r.eval_prompts, r.cfg.eval.temperature)
    except Interrupted:
        if not step_done:
            raise
        return None


def save(r: Run, step: int) -> str:
    """Atomic checkpoint of trainers (sharded), scheduler, sampler cursor and config."""
    tmp = checkpoint.begin(r.run_dir, step)
    r.loop.pools.trainers.save(tmp)
    checkpoint.write_in_flight(tmp, r.loop.pipeline.state_dict())  # batches generated ahead (max_staleness)
    state = {
        "step": step,
        "scheduler": r.loop.pools.scheduler.state_dict(),
        "sampler": r.sampler.state_dict(),
        "config": to_yaml(r.cfg),
    }
    path = checkpoint.commit(tmp, state, r.cfg.checkpoint.keep)
    _log(f"checkpoint: {path}")
    return path


def _restore(r: Run, path: Optional[str]) -> int:
    """After a lost trainer rank: the trainer group, the Scheduler and the weight transport built anew,
    then the state of ``path`` loaded (None: step 0's: initial weights, sampler from the start, nothing
    in flight) and the engines re-synced; returns the step restored."""
    r.loop.pools.restart_trainers(r.cfg, r.classes, r.model_path)
    if path:
        return resume(r, path)
    r.sampler.load_state_dict(r.initial_sampler)
    r.loop.pipeline.load_state_dict([])
    r.loop.sync_weights()
    return 0


def resume(r: Run, path: str) -> int:
    """Load a checkpoint into the pools and the sampler; returns its step."""
    state = checkpoint.read_driver_state(path)  # CheckpointError (one line) unless complete
    r.loop.pools.trainers.load(path)
    r.loop.pools.scheduler.load_state_dict(state["scheduler"])
    r.sampler.load_state_dict(state["sampler"])
    r.loop.pipeline.load_state_dict(checkpoint.read_in_flight(path))
    r.loop.sync_weights()
    _log(f"resumed from {path} at step {state['step']}")
    return int(state["step"])
