"""Atomic run checkpoints: write into ``step_N.tmp``, then rename to ``step_N``.

A checkpoint holds the trainers' sharded model and optimizer state (written by
each rank, see :meth:`rlvr.train.trainer.Trainer.save`), and ``driver.json``: the
scheduler state, the prompt sampler's cursor, the global step and the config.
A killed driver therefore always leaves the previous complete checkpoint; a
half-written ``.tmp`` directory is ignored and cleaned up on the next save.

:func:`resolve_checkpoint` turns a run checkpoint into something an engine can serve:
the trainers' sharded DCP model state is consolidated once into ``step_N/hf`` (an HF
directory of the base model named in the saved config, written atomically).

A run directory holds one run: :func:`run_contents` says what marks it as taken (its
``metrics.jsonl``, its checkpoints), :func:`move_aside` renames it to ``<run_dir>.old-<time>``
(``rlvr train --fresh``; nothing is ever deleted).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

_log = logging.getLogger(__name__)
IN_FLIGHT = "in_flight.pkl"
_STEP = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def begin(run_dir: str, step: int) -> str:
    """A fresh temporary directory for the checkpoint of ``step``."""
    tmp = os.path.join(checkpoint_root(run_dir), f"step_{step:06d}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def commit(tmp: str, driver_state: Dict[str, Any], keep: int) -> str:
    """Write the driver state, rename into place, prune old checkpoints; returns the final path."""
    with open(os.path.join(tmp, "driver.json"), "w") as f:
        json.dump(driver_state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    final = tmp[: -len(".tmp")]
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(os.path.dirname(final))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str) -> List[str]:
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(root) if (m := _STEP.match(name))]
    return [os.path.join(root, name) for _, name in sorted(found)]


_WARNED: set = set()  # corrupt checkpoints already named in a warning by this process


def latest(run_dir: str) -> Optional[str]:
    """The newest complete checkpoint of ``run_dir`` (a readable driver.json), or None; a newer one
    that is unreadable (a torn or corrupt file) is skipped with a warning naming it."""
    for path in reversed(list_checkpoints(checkpoint_root(run_dir))):
        if not os.path.isfile(os.path.join(path, "driver.json")):
            continue
        try:
            read_driver_state(path)
        except CheckpointError as exc:
            if path not in _WARNED:  # the run dir check and the build both look: say it once
                _WARNED.add(path)
                _log.warning("[rlvr] skipping a corrupt checkpoint: %s", exc)
            continue
        return path
    return None


class CheckpointError(ValueError):
    """A path is not something that can be served or resumed; says what it lacks."""


class RunDirError(ValueError):
    """``logging.run_dir`` already holds another run; the message says how to go on."""


def write_in_flight(tmp: str, batches: List[Dict[str, Any]]) -> None:
    """The pipeline's in-flight batches (generated and scored samples), when there are any."""
    if batches:
        with open(os.path.join(tmp, IN_FLIGHT), "wb") as f:
            pickle.dump(batches, f)


def read_in_flight(path: str) -> List[Dict[str, Any]]:
    file = os.path.join(path, IN_FLIGHT)
    if not os.path.isfile(file):
        return []
    with open(file, "rb") as f:
        return pickle.load(f)  # our own checkpoint, written by write_in_flight


def read_driver_state(path: str) -> Dict[str, Any]:
    state_file = os.path.join(path, "driver.json")
    if not os.path.isfile(state_file):
        raise CheckpointError(f"not a complete rlvr checkpoint (no driver.json): {path}")
    try:
        with open(state_file) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{state_file}: unreadable ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{state_file}: no integer 'step'")
    return state


def run_contents(run_dir: str) -> List[str]:
    """What marks ``run_dir`` as holding a run (``metrics.jsonl``, checkpoints); empty when it is free."""
    found = ["metrics.jsonl"] if os.path.isfile(os.path.join(run_dir, "metrics.jsonl")) else []
    ckpts = list_checkpoints(checkpoint_root(run_dir))
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint(s), newest {os.path.basename(ckpts[-1])}")
    return found


def move_aside(run_dir: str) -> str:
    """Rename ``run_dir`` to ``<run_dir>.old-<YYYYmmdd-HHMMSS>`` (never deletes); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = f"{run_dir}.old-{stamp}", 1
    while os.path.exists(target):  # two --fresh starts within one second
        target, n = f"{run_dir}.old-{stamp}-{n}", n + 1
    os.rename(run_dir, target)
    return target


def resolve_checkpoint(checkpoint: str, cfg: Any) -> str:
    """An HF directory for CHECKPOINT: itself, the built tiny model, or a consolidated rlvr checkpoint."""
    if checkpoint == "tiny":
        from rlvr.train.tiny_model import ensure_model

        return ensure_model(cfg.model, cfg.data.train.max_operand)
    if os.path.isfile(os.path.join(checkpoint, "config.json")):
        return checkpoint
    if os.path.isfile(os.path.join(checkpoint, "driver.json")) and os.path.isdir(os.path.join(checkpoint, "trainer")):
        return consolidate(checkpoint)
    raise CheckpointError(f"{checkpoint}: neither an HF model directory (config.json) nor an rlvr checkpoint "
                            f"(driver.json and trainer/), nor 'tiny'")


def consolidate(path: str) -> str:
    """``path/hf``: the trainers' sharded model state (FSDP2's DCP or DeepSpeed's ZeRO layout) as an HF directory.

    The architecture and tokenizer come from the saved config's model (for ``tiny``, built from
    code without its warm start: every weight comes from the checkpoint); the directory is written
    beside the checkpoint once (temporary name, then rename) and reused by later evaluations.
    """
    import shutil
    import tempfile

    final = os.path.join(path, "hf")
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    model, tokenizer = _base_model(saved_config(path))
    from rlvr.train import deepspeed_trainer

    if deepspeed_trainer.is_checkpoint(path):  # DeepSpeed's ZeRO layout: its fp32 masters, read offline
        model.load_state_dict(deepspeed_trainer.hf_state_dict(path))  # strict: names and shapes checked
    else:
        _load_dcp_model(model, path)
    tmp = tempfile.mkdtemp(prefix=".hf-", dir=path)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, final)
    except OSError:
        if not os.path.isfile(os.path.join(final, "config.json")):  # unless another process won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _load_dcp_model(model: Any, path: str) -> None:
    """The FSDP2 trainers' sharded model state (DCP, keys ``model.hf.*``), in place into ``model``."""
    import torch.distributed.checkpoint as dcp

    stored = dcp.FileSystemReader(os.path.join(path, "trainer")).read_metadata().state_dict_metadata
    params = model.state_dict()
    wanted = {f"hf.{k}": v for k, v in params.items() if f"model.hf.{k}" in stored}
    loaded = {v.data_ptr() for v in wanted.values()}
    missing = [k for k, v in params.items() if f"hf.{k}" not in wanted and v.data_ptr() not in loaded]  # not tied
    if missing:
        raise CheckpointError(f"{path}/trainer holds no weights for {missing[:5]} of the configured model")
    for key, tensor in wanted.items():  # e.g. a tiny model rebuilt since, with another vocabulary
        if tuple(stored[f"model.{key}"].size) != tuple(tensor.shape):
            raise CheckpointError(f"{path}/trainer: {key[3:]} has shape {tuple(stored[f'model.{key}'].size)}, "
                                  f"the model of the saved config {tuple(tensor.shape)}")
    with warnings.catch_warnings():  # one process by design: torch's "assuming a single process" notice
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": wanted}, checkpoint_id=os.path.join(path, "trainer"), no_dist=True)  # in place


def _base_model(cfg: Any) -> Tuple[Any, Any]:
    """The (float32 model, tokenizer) a run of ``cfg`` started from, to receive a checkpoint's weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.model.path == "tiny":
        from rlvr.train.tiny_model import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        return build_model(cfg.model.tiny, tokenizer), tokenizer
    from rlvr.train.tiny_model import ensure_model

    base = ensure_model(cfg.model)
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), AutoTokenizer.from_pretrained(base)


def saved_config(path: str) -> Any:
    """The run config stored in a checkpoint's ``driver.json``."""
    from omegaconf import OmegaConf

    from rlvr.config import RLConfig

    text = read_driver_state(path).get("config")
    if not text:
        raise CheckpointError(f"{path}/driver.json has no 'config'")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RLConfig), OmegaConf.create(text)))
