"""Per-step metrics: one JSONL file that is always written, plus optional trackers.

Design: ``run_dir/metrics.jsonl`` is the source of truth (``rlvr report`` reads
only it).  Each :meth:`MetricsLogger.log` call appends one JSON object
``{"step": k, "time": unix_s, **metrics}`` and flushes it, so a killed run
keeps every step it logged; a torn last line is dropped when the file is
opened again.  TensorBoard (default), Weights & Biases (offline unless
``WANDB_MODE`` says otherwise) and MLflow (local file store) are *sinks* fed the
same numbers through their own libraries, imported only when enabled.

Resuming: ``resume_step`` is the first step this process will log.  Rows at or
after it are removed from the JSONL before appending, and TensorBoard gets the
same ``purge_step``, so a resumed run never shows a step twice.

Values that are not finite numbers (NaN, inf, strings, None) are written to the
JSONL as ``null`` and skipped by the trackers, with one warning per key.

The keys the RL driver logs are listed in :data:`METRIC_KEYS` (TP-Schedule,
arXiv 2605.25381: the percentile and decay actually in force are logged every
step under ``schedule/``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional

from rlvr.config import LoggingConfig

_log = logging.getLogger(__name__)

TRACKING_HINT = "pip install rlvr[tracking]"

# The driver's metric names (``eval/accuracy`` only on evaluation steps).
METRIC_KEYS = (
    "reward/mean", "reward/std", "train/accuracy", "eval/accuracy", "response/length_mean",
    "adv/zero_variance_group_frac", "policy/entropy", "policy/entropy_targeted",
    "schedule/percentile", "schedule/decay", "credit/targeted_frac", "credit/token_weight_mean",
    "loss/clip_frac_low", "loss/clip_frac_high", "loss/approx_kl", "train/loss", "train/grad_norm",
    "train/lr", "train/trained_frac", "time/generate", "time/verify", "time/stats", "time/credit", "time/train",
    "time/train_compute", "time/sync", "time/step", "perf/tokens_per_s", "rollout/logprob_mismatch",
    "sampling/samples_generated", "loss/kl_ref", "reward/overlong_penalty_mean", "reward/overlong_frac",
    "sampling/rounds", "sampling/groups_short",
)  # the last five only with a KL term, the overlong penalty, DAPO dynamic sampling / Reinforce-Ada

# (label, key, format) of the console line; "reward" is always printed (other tools grep for it).
CONSOLE_KEYS = (
    ("reward", "reward/mean", "{:.3f}"),
    ("acc", "train/accuracy", "{:.3f}"),
    ("eval", "eval/accuracy", "{:.3f}"),
    ("ent", "policy/entropy", "{:.3f}"),
    ("pct", "schedule/percentile", "{:.3f}"),
    ("kl", "loss/approx_kl", "{:.4f}"),
    ("kl_ref", "loss/kl_ref", "{:.4f}"),
    ("len", "response/length_mean", "{:.1f}"),
    ("tok/s", "perf/tokens_per_s", "{:.0f}"),
    ("t", "time/step", "{:.1f}s"),
)


def as_number(value: Any) -> Optional[float]:
    """``value`` as a finite float (Python, NumPy or 0-d/1-element tensor scalar), else None."""
    if isinstance(value, bool):
        return float(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # more than one element
            return None
    if not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_line(step: int, total: int, metrics: Mapping[str, Any]) -> str:
    """``step {k}/{T} reward=0.312 acc=0.500 ...``: the fixed short console line of one step."""
    parts = [f"step {step}/{total}"]
    for label, key, fmt in CONSOLE_KEYS:
        value = as_number(metrics.get(key))
        if value is not None:
            parts.append(f"{label}={fmt.format(value)}")
        elif key == "reward/mean":
            parts.append("reward=nan")
    short = as_number(metrics.get("sampling/groups_short"))
    if short:  # DAPO dynamic sampling ran out of rounds before filling the batch with informative groups
        parts.append(f"(short {short:.0f} groups after {as_number(metrics.get('sampling/rounds')) or 0:.0f} rounds)")
    return " ".join(parts)


# --------------------------------------------------------------------------- JSONL
def read_metrics(path: str) -> List[Dict[str, Any]]:
    """Every row of a metrics.jsonl, in file order; undecodable (torn) lines are skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                _log.warning("%s line %d: not JSON (torn write?), skipped", path, lineno)
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def truncate_metrics(path: str, resume_step: int) -> None:
    """Drop the rows with ``step >= resume_step`` (and any torn line), rewriting atomically."""
    if not os.path.exists(path):
        return
    kept = [row for row in read_metrics(path) if row["step"] < resume_step]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
    os.replace(tmp, path)


def _drop_torn_tail(path: str) -> None:
    """A run killed mid-write leaves a line without its newline; cut it so appends stay valid."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class JsonlSink:
    def __init__(self, path: str, resume_step: Optional[int]) -> None:
        if resume_step is not None:
            truncate_metrics(path, resume_step)
        _drop_torn_tail(path)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def log(self, step: int, raw: Mapping[str, Any]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        for key, value in raw.items():
            number = as_number(value)
            # Keep ints as ints (token counts); everything not a finite number becomes null.
            row[key] = value if isinstance(value, int) and not isinstance(value, bool) else number
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------- trackers
def _require(module: str, flag: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"logging.{flag}=true needs the '{module}' package: {TRACKING_HINT}") from exc


def _persistent_id(run_dir: str, name: str, resume: bool, new_id: Any) -> str:
    """The tracker run id saved in ``run_dir``: reused on resume, replaced on a fresh run."""
    path = os.path.join(run_dir, f".{name}_run_id")
    if resume and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    run_id = new_id()
    with open(path, "w", encoding="utf-8") as f:
        f.write(run_id)
    return run_id


class TensorBoardSink:
    def __init__(self, run_dir: str, config_dict: Optional[dict], resume_step: Optional[int]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            SummaryWriter = _require("tensorboardX", "tensorboard").SummaryWriter
        # purge_step hides the events a crashed run wrote at or after the resume step.
        self.writer = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=resume_step)
        if config_dict:
            self.writer.add_text("config", "```\n" + json.dumps(config_dict, indent=2, default=str) + "\n```")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: str, config_dict: Optional[dict], resume_step: Optional[int]) -> None:
        wandb = _require("wandb", "wandb")
        run_id = _persistent_id(run_dir, "wandb", resume_step is not None, lambda: uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rlvr"),
            name=os.path.basename(os.path.abspath(run_dir)),
            id=run_id,
            resume="allow",
            dir=run_dir,
            config=config_dict or {},
            mode=os.environ.get("WANDB_MODE", "offline"),  # no network unless the user asks
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, run_dir: str, config_dict: Optional[dict], resume_step: Optional[int]) -> None:
        _require("mlflow", "mlflow")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        store = os.path.abspath(os.path.join(run_dir, "mlruns"))
        # MLflow >= 3.7 refuses a file store unless opted in; a local, serverless store is the point here.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri="file://" + store)
        name = os.path.basename(os.path.abspath(run_dir))
        experiment = self.client.get_experiment_by_name("rlvr")
        exp_id = experiment.experiment_id if experiment else self.client.create_experiment("rlvr")

        def new_run() -> str:
            return self.client.create_run(exp_id, run_name=name).info.run_id

        self.run_id = _persistent_id(run_dir, "mlflow", resume_step is not None, new_run)
        if config_dict:
            self.client.log_dict(self.run_id, config_dict, "config.json")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        batch = [self._metric(key, value, now_ms, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


# --------------------------------------------------------------------------- logger
class MetricsLogger:
    """Writes each step's metrics to ``run_dir/metrics.jsonl`` and the trackers ``cfg`` enables."""

    def __init__(
        self,
        cfg: LoggingConfig,
        run_dir: str,
        config_dict: Optional[dict] = None,
        resume_step: Optional[int] = None,
    ) -> None:
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.jsonl = JsonlSink(self.path, resume_step)
        self.trackers: List[Any] = []
        self._warned: set = set()
        enabled = [(cfg.tensorboard, TensorBoardSink), (cfg.wandb, WandbSink), (cfg.mlflow, MlflowSink)]
        try:
            for on, sink in enabled:
                if on:
                    self.trackers.append(sink(run_dir, config_dict, resume_step))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.jsonl.log(step, metrics)
        if self.trackers:
            clean = self._finite(metrics)
            for tracker in self.trackers:
                tracker.log(step, clean)

    def _finite(self, metrics: Mapping[str, Any]) -> Dict[str, float]:
        clean = {}
        for key, value in metrics.items():
            number = as_number(value)
            if number is not None:
                clean[key] = number
            elif key not in self._warned:
                self._warned.add(key)
                _log.warning("metric %r = %r is not a finite number: skipped by the trackers "
                             "(null in metrics.jsonl); warned once per key", key, value)
        return clean

    def close(self) -> None:
        for sink in [self.jsonl, *self.trackers]:
            try:
                sink.close()
            except Exception as exc:  # one failing tracker must not keep the others open
                _log.warning("closing %s failed: %s", type(sink).__name__, exc)
        self.trackers = []

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def merge_steps(rows: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One dict per step, sorted by step; several rows of one step merge (later keys win)."""
    merged: Dict[int, Dict[str, Any]] = {}
    for row in rows:
        merged.setdefault(row["step"], {}).update(row)
    return [merged[step] for step in sorted(merged)]
