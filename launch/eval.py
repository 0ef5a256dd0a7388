"""`rlvr eval CHECKPOINT --data FILE.jsonl --adapter NAME [--n N --k 1,8 ...]`: pass@k of a checkpoint.

The entry point: parses the command line, serves CHECKPOINT on the same rollout engines and
reward pool as training (``workers.ACTORS`` through :func:`rlvr.loop.groups.create_serving`),
and runs :func:`rlvr.tools.evaluate.run_eval` over the prompts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

from launch import errors

ENGINE_DIR = "~/.cache/rlvr/eval"  # vLLM caches and sockets of the evaluation engines


def _build_backends(cfg: Any, checkpoint: str) -> Tuple[Any, Any]:
    """(generate_fn, score_fn) of :func:`run_eval`: rollout engines serving ``checkpoint`` and the reward pool.

    Starts Ray.  vLLM's caches (~150 MB of compiler headers on CPU) go to one shared
    ``ENGINE_DIR``, not into every output directory.
    """
    from transformers import AutoTokenizer

    from rlvr.loop.checkpoint import resolve_checkpoint
    from rlvr.loop.groups import create_serving
    from rlvr.loop.placement import start_ray
    from rlvr.tools.evaluate import EngineGenerate
    from workers import ACTORS

    model_path = resolve_checkpoint(checkpoint, cfg)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    start_ray(cfg)
    rollouts, reward = create_serving(cfg, ACTORS, model_path, os.path.expanduser(ENGINE_DIR))
    return EngineGenerate(cfg, tokenizer, rollouts), reward.score


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _parse_ks(text: str) -> List[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers, got '{text}'") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k values must be >= 1, got '{text}'")
    return ks


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from rlvr.config import DATASETS

    p = argparse.ArgumentParser(prog="rlvr eval", description="pass@k of a checkpoint on held-out prompts.")
    p.add_argument("checkpoint", help="HF model directory, rlvr checkpoint (runs/NAME/checkpoints/step_N), or 'tiny'")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. rollout.max_tokens=512")
    p.add_argument("--data", required=True, help="JSONL file of held-out prompts")
    p.add_argument("--adapter", required=True, choices=DATASETS, help="row format of --data")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--k", type=_parse_ks, default=[1], help="comma-separated k of pass@k, each <= n")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many prompts")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/eval-<data name>)")
    p.add_argument("--config", action="append", default=[], help="YAML config(s) merged before the overrides")
    p.add_argument("--chunk", type=int, default=64, help="prompts generated per call")
    p.add_argument("--debug", action="store_true", default=errors.env_debug(),
                   help="show the traceback of an error (also RLVR_DEBUG=1)")
    args = p.parse_intermixed_args(list(argv))
    for flag, value in (("--n", args.n), ("--chunk", args.chunk), ("--limit", args.limit)):
        if value is not None and value < 1:  # an empty request is a usage error before any engine starts
            p.error(f"{flag} must be >= 1, got {value}")
    if args.k[-1] > args.n:
        p.error(f"every --k must be <= --n ({args.n}), got {','.join(map(str, args.k))}")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"config overrides are key=value, got {' '.join(bad)}")
    return args


def main(argv: Sequence[str]) -> int:
    from rlvr.config import ConfigError, load_config
    from rlvr.data import iter_prompts
    from rlvr.data.adapters import DataError, bind_adapter
    from rlvr.loop.checkpoint import CheckpointError
    from rlvr.tools.evaluate import EvalInputError, run_eval

    args = parse_args(argv)
    data_overrides = [f"data.eval.adapter={args.adapter}", f"data.eval.path={args.data}"]
    if args.limit is not None:
        data_overrides.append(f"data.eval.limit={args.limit}")
    try:
        cfg = load_config(args.config, [*data_overrides, *args.overrides], check_paths=True)
    except ConfigError as exc:
        return errors.report("rlvr eval", exc, args.debug)
    if not os.path.isfile(args.data):
        print(f"rlvr eval: data file not found: {args.data}", file=sys.stderr)
        return 2
    if args.n > 1 and cfg.eval.temperature == 0:
        print(f"rlvr eval: warning: --n {args.n} with eval.temperature=0 (greedy) gives identical samples",
              file=sys.stderr)
    data_name = os.path.splitext(os.path.basename(args.data))[0]
    out_dir = args.out or os.path.join(args.checkpoint, f"eval-{data_name}")
    prompts = iter_prompts(Path(args.data), bind_adapter(args.adapter, cfg.data.eval), cfg.data.on_bad_row, args.limit)
    try:
        generate_fn, score_fn = _build_backends(cfg, args.checkpoint)
        summary = run_eval(prompts, generate_fn, score_fn, args.n, args.k, out_dir,
                           chunk_size=args.chunk, show_progress=cfg.logging.progress)
    except (DataError, EvalInputError) as exc:  # one line naming the file, the row and the field
        return errors.report("rlvr eval", exc, args.debug, code=2,
                             note=f" (samples scored so far kept in {out_dir}/samples.jsonl)")
    except CheckpointError as exc:
        return errors.report("rlvr eval", exc, args.debug)
    except Exception as exc:  # a known error from inside an actor, or a Ray failure: one line
        code = errors.report("rlvr eval", exc, args.debug)
        if code is None:
            raise
        return code
    finally:
        _shutdown_ray()
    scores = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.startswith(("pass@", "mean@")))
    print(f"rlvr eval: {summary['num_prompts']} prompts x {args.n}: {scores} -> {out_dir}/summary.json")
    return 0
