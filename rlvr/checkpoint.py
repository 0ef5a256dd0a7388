"""Atomic run checkpoints: write into ``step_N.tmp``, then rename to ``step_N``.

A checkpoint holds the trainers' sharded model and optimizer state (written by
each rank, see :meth:`rlvr.trainer.Trainer.save`), and ``driver.json``: the
scheduler state, the prompt sampler's cursor, the global step and the config.
A killed driver therefore always leaves the previous complete checkpoint; a
half-written ``.tmp`` directory is ignored and cleaned up on the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional

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


def latest(run_dir: str) -> Optional[str]:
    found = list_checkpoints(checkpoint_root(run_dir))
    return found[-1] if found else None


def read_driver_state(path: str) -> Dict[str, Any]:
    state_file = os.path.join(path, "driver.json")
    if not os.path.isfile(state_file):
        raise FileNotFoundError(f"not a complete rlvr checkpoint (no driver.json): {path}")
    with open(state_file) as f:
        return json.load(f)
