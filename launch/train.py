"""`rlvr train CONFIG.yaml [CONFIG2.yaml ...] [key=value ...] [resume=CHECKPOINT_DIR|auto] [--fresh] [--debug]`.

The entry point of a run: parses the command line, loads the one config, checks the run
directory (:func:`rlvr.loop.run.prepare_run_dir`), and hands the Ray shells
(``workers.ACTORS``) to :func:`rlvr.loop.run.run`.  Everything that can be refused is refused
before Ray starts, in one line (:mod:`launch.errors`).  Exit codes: 0 done (or nothing left to
do), 2 bad config/data/checkpoint/run directory, 1 the run failed, 130/143 stopped by
SIGINT/SIGTERM after saving a checkpoint (the command to resume is printed).
"""

from __future__ import annotations

import shlex
import sys
from typing import Any, List, Optional

from launch import errors

USAGE = ("usage: rlvr train CONFIG.yaml [CONFIG2.yaml ...] [key=value ...] [resume=CHECKPOINT_DIR|auto] "
         "[--fresh] [--debug]")
FLAGS = ("--fresh",)  # --debug is taken out first (launch.errors.debug_flag)


def main(argv: List[str]) -> int:
    argv, debug = errors.debug_flag(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    unknown = [a for a in argv if a.startswith("-") and "=" not in a and a not in FLAGS]
    if unknown:
        print(f"rlvr train: unknown option {unknown[0]}; {USAGE}", file=sys.stderr)
        return 2
    try:
        return train(argv, fresh="--fresh" in argv)
    except Exception as exc:  # known errors become one line, the rest is re-raised
        code = errors.report("rlvr train", exc, debug)
        if code is None:
            raise
        return code


def train(argv: List[str], fresh: bool = False) -> int:
    from rlvr.config import load_config

    paths = [a for a in argv if "=" not in a and a not in FLAGS]
    overrides = ["checkpoint." + a if a.startswith("resume=") else a for a in argv if "=" in a]
    cfg = load_config(paths, overrides, check_paths=True)

    from rlvr.loop.run import prepare_run_dir, run
    from rlvr.loop.signals import Interrupted

    start = prepare_run_dir(cfg, fresh)
    if start and start[1] >= cfg.schedule.total_steps:
        print(f"[rlvr] run already complete: {start[0]} is step {start[1]} of schedule.total_steps="
              f"{cfg.schedule.total_steps}; nothing to train (raise schedule.total_steps to go on)", flush=True)
        return 0
    from workers import ACTORS

    try:
        run(cfg, ACTORS)
    except Interrupted as exc:
        print(resume_hint(argv, exc), file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def resume_hint(argv: List[str], stopped: Any) -> str:
    """What an interrupted run kept (``stopped``: :class:`rlvr.loop.run.Interrupted`), and the command that continues it."""
    if stopped.checkpoint is None:
        return ("[rlvr] stopped before the first step completed; nothing saved. Start again with: "
                + command(argv, "resume=auto"))
    return (f"[rlvr] stopped after step {stopped.step}; checkpoint {stopped.checkpoint}. Resume with: "
            + command(argv, f"resume={stopped.checkpoint}"))


def command(argv: List[str], resume: Optional[str]) -> str:
    """``rlvr train ARGV`` with its resume= replaced (and without --fresh, which would move the run aside)."""
    keep = [a for a in argv if not a.startswith(("resume=", "checkpoint.resume=")) and a not in FLAGS]
    return " ".join(["rlvr", "train", *map(shlex.quote, keep), *([shlex.quote(resume)] if resume else [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
