"""`rlvr train CONFIG.yaml [CONFIG2.yaml ...] [key=value ...] [resume=CHECKPOINT_DIR]`.

The entry point of a run: parses the command line, loads the one config, and hands the
Ray shells (``workers.ACTORS``) to :func:`rlvr.loop.run.run`.
"""

from __future__ import annotations

import sys
from typing import List

USAGE = "usage: rlvr train CONFIG.yaml [CONFIG2.yaml ...] [key=value ...] [resume=CHECKPOINT_DIR]"


def main(argv: List[str]) -> int:
    from rlvr.config import ConfigError, load_config

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    paths = [a for a in argv if "=" not in a]
    overrides = ["checkpoint." + a if a.startswith("resume=") else a for a in argv if "=" in a]
    try:
        cfg = load_config(paths, overrides, check_paths=True)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    from rlvr.loop.run import run
    from workers import ACTORS

    run(cfg, ACTORS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
