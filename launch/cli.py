"""`rlvr` command line: one entry point, one module per sub-command.

Each sub-command lives in its own module exposing ``main(argv) -> int``; this file
only dispatches, so `rlvr --help` stays fast (no torch/Ray import until needed).
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = {
    "train": ("launch.train", "train a policy: rlvr train CONFIG.yaml [CONFIG2.yaml ...] [key=value ...]"),
    "submit": ("launch.submit", "submit `rlvr train` to a Ray cluster through the Job Submission API"),
    "eval": ("launch.eval", "evaluate a checkpoint: rlvr eval CHECKPOINT --data FILE.jsonl"),
    "report": ("rlvr.tools.report", "plot run directories, or redraw a sweep: rlvr report RUN_DIR|SWEEP_DIR ..."),
    "sweep": ("launch.sweep", "train every config x seed and compare: rlvr sweep CONFIG... --seeds 0-4 [key=value ...]"),
}


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a captured or redirected stream too)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _show_library_warnings() -> None:
    """rlvr's own warnings (skipped rows, ...) reach the terminal as plain lines, whatever
    Ray, vLLM or transformers did to the root logger."""
    log = logging.getLogger("rlvr")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: rlvr COMMAND [args]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<8} {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlvr: unknown command '{name}'; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    _show_library_warnings()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
