"""`rlvr submit`: run `rlvr train` on a Ray cluster through the Job Submission API.

    rlvr submit CONFIG.yaml [CONFIG2.yaml ...] [key=value ...] --address http://HEAD:8265

This is `ray job submit --working-dir . -- python -m launch.cli train CONFIG... key=value...`
with the parts that make it safe to use for training runs:

* the configs and overrides are validated here first with :func:`rlvr.config.load_config`,
  so a typo fails in a second with the one-line ``ConfigError`` instead of after the
  upload (``--no-local-check`` skips this and lets the cluster report it);
* the working directory (configs included; they must lie inside it) is uploaded with
  ``excludes`` for run outputs, caches, VCS data, the cluster token and any file larger
  than ``--max-file-mib``;
* the entrypoint is ``python -m launch.cli train``, so the uploaded code (first on the job's
  ``sys.path``) runs rather than whichever ``rlvr`` happens to be installed on the head;
* the Ray auth token is sent as ``Authorization: Bearer`` (Ray >= 2.52 token auth; the
  dashboard's job API is otherwise remote code execution, CVE-2023-48022). It is looked up
  like Ray does: ``--token-file``, ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``,
  ``~/.ray/auth_token``;
* logs are streamed until the job ends; Ctrl-C detaches and leaves the job running.

Exit status: 0 the job SUCCEEDED (or was submitted, with ``--no-wait``); 1 it FAILED or was
STOPPED; 2 nothing was submitted because of a usage or config error; 3 nothing was submitted
because the dashboard could not be reached or refused the token; 130 detached by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# gitignore-style patterns, relative to the working dir (Ray also honours .gitignore files).
EXCLUDES = (
    ".git",
    "runs/",
    "**/__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    ".benchmarks/",
    "*.egg-info/",
    "build/",
    "dist/",
    ".venv/",
    "venv/",
    "wandb/",
    "mlruns/",
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.gguf",
    "k8s/setup/secrets/",  # the cluster's auth token never leaves the laptop
)
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class JobSpec:
    """Everything sent to the Job Submission API (also what ``--dry-run`` prints)."""

    entrypoint: str
    runtime_env: dict[str, object]
    submission_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: float = 0.0


# --------------------------------------------------------------------------- pure helpers
def split_args(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split positionals into config files and ``key=value`` overrides (order kept)."""
    configs, overrides = [], []
    for item in items:
        (overrides if "=" in item else configs).append(item)
    return configs, overrides


def resolve_token(token_file: str | None, env: Mapping[str, str], home: Path) -> str | None:
    """The Ray auth token, looked up in Ray's order; whitespace is stripped as Ray does."""
    if token_file:
        return Path(token_file).expanduser().read_text().strip()
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    for path in (env.get("RAY_AUTH_TOKEN_PATH"), home / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    return None


def relative_configs(configs: Sequence[str], working_dir: Path) -> list[str]:
    """Config paths as the job sees them (relative to the uploaded dir); outside it is an error."""
    out = []
    for config in configs:
        path = Path(config).resolve()
        try:
            out.append(path.relative_to(working_dir.resolve()).as_posix())
        except ValueError:
            raise ValueError(f"config {config} is outside the working dir {working_dir}; "
                             "only the working dir is uploaded (move it there or pass --working-dir)") from None
    return out


def build_entrypoint(configs: Sequence[str], overrides: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "launch.cli", "train", *configs, *overrides])


def large_files(working_dir: Path, excludes: Sequence[str], limit_bytes: int) -> list[str]:
    """Files Ray would upload that are at least ``limit_bytes``, as anchored exclude patterns.

    Walks with Ray's own traversal so .gitignore files and ``excludes`` apply exactly as in the
    upload; if that private helper moves, the scan is skipped (Ray still warns per file).
    """
    try:
        from ray._private.runtime_env.packaging import _dir_travel, _get_excludes
    except ImportError:  # pragma: no cover - depends on the installed Ray
        return []
    found: list[str] = []

    root = working_dir.resolve()

    def handler(path: Path) -> None:
        if path.is_file() and path.stat().st_size >= limit_bytes:
            found.append("/" + path.relative_to(root).as_posix())

    _dir_travel(root, [_get_excludes(root, list(excludes))], handler, include_gitignore=True)
    return sorted(found)


def build_runtime_env(working_dir: Path, excludes: Sequence[str], pip: Sequence[str],
                      image_uri: str | None, env_vars: Mapping[str, str]) -> dict[str, object]:
    runtime_env: dict[str, object] = {
        "working_dir": str(working_dir),
        "excludes": list(excludes),
        "env_vars": {"PYTHONUNBUFFERED": "1", **env_vars},
    }
    if pip:
        runtime_env["pip"] = {"packages": list(pip), "pip_check": False}
    if image_uri:
        runtime_env["image_uri"] = image_uri
    return runtime_env


def submission_id(name: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"rlvr-{name}-{stamp}-{secrets.token_hex(2)}"


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rlvr submit",
        description="Submit `rlvr train CONFIG... key=value...` to a Ray cluster (Ray Job Submission API).",
        epilog="Afterwards: ray job logs|status|stop JOB_ID --address ADDRESS "
               "(with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN set).")
    p.add_argument("items", nargs="+", metavar="CONFIG.yaml | key=value",
                   help="config files merged in order, then dotlist overrides (as for `rlvr train`)")
    p.add_argument("--address", default=None,
                   help=f"dashboard URL; default $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS or {DEFAULT_ADDRESS}")
    p.add_argument("--working-dir", default=".", help="directory uploaded as the job's working_dir (default: .)")
    p.add_argument("--token-file", default=None,
                   help="Ray auth token file (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
    p.add_argument("--submission-id", default=None, help="job id (default: rlvr-NAME-DATE-TIME-XXXX)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="pinned pip requirement installed for the job (repeatable), e.g. vllm==0.32.0")
    p.add_argument("--image-uri", default=None, help="container image for the job's workers (runtime_env image_uri)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="extra gitignore-style pattern not to upload (repeatable)")
    p.add_argument("--max-file-mib", type=float, default=10.0,
                   help="files at least this large are not uploaded (default: 10)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=0.0, help="CPUs reserved for the driver")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without tailing logs")
    p.add_argument("--no-local-check", action="store_true",
                   help="skip the local config validation (the job then fails on the cluster instead)")
    p.add_argument("--dry-run", action="store_true", help="print the job as JSON and submit nothing")
    return p.parse_args(list(argv))


def make_spec(args: argparse.Namespace) -> JobSpec:
    """Validate locally and build the job; raises ValueError / ConfigError on bad input."""
    working_dir = Path(args.working_dir).resolve()
    if not working_dir.is_dir():
        raise ValueError(f"working dir {args.working_dir} is not a directory")
    configs, overrides = split_args(args.items)
    if not configs:
        raise ValueError("give at least one config file, e.g. configs/quickstart_cpu.yaml")
    name = "run"
    if not args.no_local_check:
        from rlvr.config import load_config  # no torch/Ray import: cheap

        # `rlvr train` reads the shorthand resume=DIR as checkpoint.resume=DIR (launch/train.py)
        cfg = load_config(configs, ["checkpoint." + o if o.startswith("resume=") else o for o in overrides])
        name = cfg.name
        if not os.path.isabs(os.path.expanduser(cfg.logging.run_dir)):
            print(f"[rlvr submit] warning: logging.run_dir={cfg.logging.run_dir} is relative, so on the cluster it "
                  "lands in the job's temporary copy of the working dir; set it to a shared path "
                  "(e.g. logging.run_dir=/mnt/rlvr/runs/${name})", file=sys.stderr)
    if args.pip and args.image_uri:
        raise ValueError("--pip and --image-uri are exclusive (install the packages into the image)")
    env_vars = dict(kv.split("=", 1) for kv in args.env if "=" in kv)
    if len(env_vars) != len(args.env):
        raise ValueError("--env takes KEY=VALUE")
    rel_configs = relative_configs(configs, working_dir)
    excludes = [*EXCLUDES, *args.exclude]
    excludes += large_files(working_dir, excludes, int(args.max_file_mib * 2**20))
    return JobSpec(
        entrypoint=build_entrypoint(rel_configs, overrides),
        runtime_env=build_runtime_env(working_dir, excludes, args.pip, args.image_uri, env_vars),
        submission_id=args.submission_id or submission_id(name),
        metadata={"rlvr_configs": " ".join(rel_configs), "rlvr_overrides": " ".join(overrides)},
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )


def resolve_address(flag: str | None, env: dict[str, str]) -> str:
    """Explicit --address wins: the Ray client would otherwise let $RAY_ADDRESS override it."""
    if flag:
        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            env.pop(var, None)
    address = flag or env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    return address if "://" in address else f"http://{address}"  # HEAD:8265 means the dashboard


def connect(address: str, token: str | None):
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def follow(client, job_id: str, poll_s: float = 2.0) -> str:
    """Stream the job's logs until it ends; return its final status."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as exc:  # noqa: BLE001 - websocket closed early or a proxy dropped it: poll instead
        print(f"[rlvr submit] log stream ended ({exc}); polling the job status", file=sys.stderr)
    status = str(client.get_job_status(job_id))
    while status not in TERMINAL:
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        spec = make_spec(args)
    except ValueError as exc:  # ConfigError is a ValueError
        label = type(exc).__name__ if type(exc).__name__ == "ConfigError" else "error"
        print(f"{label}: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(spec.__dict__, indent=2))
        return 0

    address = resolve_address(args.address, os.environ)
    try:
        token = resolve_token(args.token_file, os.environ, Path.home())
    except OSError as exc:
        print(f"error: cannot read the token file: {exc}", file=sys.stderr)
        return 2
    try:
        client = connect(address, token)
        job_id = client.submit_job(
            entrypoint=spec.entrypoint, runtime_env=spec.runtime_env, submission_id=spec.submission_id,
            metadata=spec.metadata, entrypoint_num_cpus=spec.entrypoint_num_cpus or None)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError (401/403), ValueError (too large)
        hint = "" if token else " (no Ray auth token found: pass --token-file or set RAY_AUTH_TOKEN)"
        print(f"error: could not submit to {address}: {exc}{hint}", file=sys.stderr)
        return 3

    print(f"[rlvr submit] job '{job_id}' submitted to {address}", flush=True)
    print(f"[rlvr submit]   ray job logs --address {address} --follow {job_id}\n"
          f"[rlvr submit]   ray job status --address {address} {job_id}\n"
          f"[rlvr submit]   ray job stop --address {address} {job_id}", flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\n[rlvr submit] detached; job '{job_id}' keeps running (ray job stop {job_id})", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    print(f"[rlvr submit] job '{job_id}' {status}", flush=True)
    if status != "SUCCEEDED" and info.message:
        print(f"[rlvr submit] status message: {info.message}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
