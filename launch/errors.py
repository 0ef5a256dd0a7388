"""Known errors reach the user as one line; ``--debug`` (or ``RLVR_DEBUG=1``) adds the traceback.

Design: a problem the user can fix (a config key, a data row, a checkpoint or run directory) is
an exception type of its own whose message already names the key, file, row or path; the
launchers print it as ``rlvr CMD: Type: message`` and exit 2.  A Ray failure (an actor that
died) is a run failure: one line, exit 1.  Raised inside a Ray actor, an error arrives wrapped in
``ray.exceptions.RayTaskError``; :func:`unwrap` takes its ``.cause`` so it reads the same as in
the driver.  Anything else is a bug and keeps Python's traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import List, Optional, Sequence, Tuple

USAGE_EXIT = 2  # config, data, checkpoint path, run directory: fix the input and run again
FAILURE_EXIT = 1  # the run itself failed


def debug_flag(argv: Sequence[str]) -> Tuple[List[str], bool]:
    """``argv`` without ``--debug``, and whether tracebacks were asked for (the flag or ``RLVR_DEBUG=1``)."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv) or env_debug()


def env_debug() -> bool:
    return os.environ.get("RLVR_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def usage_errors() -> Tuple[type, ...]:
    from rlvr.config import ConfigError
    from rlvr.data.adapters import DataError
    from rlvr.loop.checkpoint import CheckpointError, RunDirError

    return ConfigError, DataError, CheckpointError, RunDirError


def unwrap(exc: BaseException) -> BaseException:
    """The error a Ray task or actor raised, out of its ``RayTaskError`` wrapper(s)."""
    ray = sys.modules.get("ray")
    task_error = getattr(getattr(ray, "exceptions", None), "RayTaskError", None)
    while task_error is not None and isinstance(exc, task_error) and isinstance(exc.cause, BaseException) \
            and exc.cause is not exc:
        exc = exc.cause
    return exc


def exit_code(exc: BaseException) -> Optional[int]:
    """2 for a usage/config/data problem, 1 for a Ray run failure, None for anything else (a bug)."""
    if isinstance(exc, usage_errors()):
        return USAGE_EXIT
    ray = sys.modules.get("ray")
    if ray is not None and isinstance(exc, ray.exceptions.RayError):
        return FAILURE_EXIT
    return None


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def report(prog: str, exc: BaseException, debug: bool = False, note: str = "",
           code: Optional[int] = None) -> Optional[int]:
    """Print ``exc`` (unwrapped) as one line on stderr and return its exit code; None (nothing
    printed) when it is not a known error and ``code`` is not given: the caller re-raises it."""
    cause = unwrap(exc)
    code = exit_code(cause) if code is None else code
    if code is None:
        return None
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    hint = "" if debug or code == USAGE_EXIT else " (--debug or RLVR_DEBUG=1 for the traceback)"
    print(f"{prog}: {type(cause).__name__}: {one_line(cause)}{note}{hint}", file=sys.stderr, flush=True)
    return code
