"""`rlvr report RUN_DIR [RUN_DIR ...]`: plot runs from their metrics.jsonl, overlaid
(`rlvr report SWEEP_DIR`: redraw a sweep's comparison, :mod:`rlvr.tools.compare`).

Design: the report reads only ``metrics.jsonl`` (written by
:class:`rlvr.loop.metrics.MetricsLogger`), so it works on a finished, a running and
a crashed run alike.  Panels are an explicit dict of metric keys; every run has
one colour and every series of a panel one line style.  What is plotted is
also written, exactly, to ``report.json`` (run -> panel -> key -> steps and
values), so tests and other tools check the curves without reading pixels.  A
metric a run never logged is listed on its panel instead of failing the report.

The schedule panel shows the percentile and decay *in force* at each step (as
logged by the driver), which is what TP-Schedule (arXiv 2605.25381) varies.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

from rlvr.loop.metrics import as_number, merge_steps, read_metrics
from rlvr.tools.compare import is_sweep, write_comparison

# name -> (title, y label, metric keys)
PANELS: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "reward": ("reward / accuracy", "", ("reward/mean", "train/accuracy", "eval/accuracy")),
    "entropy": ("policy entropy", "nats / token", ("policy/entropy", "policy/entropy_targeted")),
    "schedule": ("schedule in force", "", ("schedule/percentile", "schedule/decay")),
    "credit": ("targeted-token fraction", "fraction", ("credit/targeted_frac",)),
    "timing": ("phase time per step", "seconds",
               ("time/generate", "time/verify", "time/credit", "time/train", "time/sync")),
    "length": ("response length", "tokens", ("response/length_mean",)),
    "pipeline": ("pools busy and overlapping (which pool to grow)", "fraction of the step / versions",
                 ("pipeline/rollout_busy_frac", "pipeline/trainer_busy_frac", "pipeline/overlap_frac",
                  "pipeline/staleness")),
}
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
# Columns of the HTML table: (header, key, how).
TABLE = (("last reward", "reward/mean", "last"), ("last train acc", "train/accuracy", "last"),
         ("last eval acc", "eval/accuracy", "last"), ("best eval acc", "eval/accuracy", "max"),
         ("mean step time (s)", "time/step", "mean"))


def run_labels(run_dirs: Sequence[str]) -> List[str]:
    """The directory name of each run; parent/name where two runs share a name."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    return [os.path.join(os.path.basename(os.path.dirname(os.path.normpath(d))), name)
            if names.count(name) > 1 else name for d, name in zip(run_dirs, names)]


def collect(run_dir: str) -> Dict[str, Any]:
    """One run's plotted data: ``series[panel][key] = {"step": [...], "value": [...]}``, the ``missing``
    keys of each panel, and the ``table`` of the HTML page."""
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = merge_steps(read_metrics(path))
    series: Dict[str, Dict[str, Dict[str, list]]] = {}
    missing: Dict[str, List[str]] = {}
    for panel, (_, _, keys) in PANELS.items():
        series[panel] = {}
        for key in keys:
            points = [(row["step"], row[key]) for row in rows if key in row]
            if points:
                series[panel][key] = {"step": [s for s, _ in points], "value": [v for _, v in points]}
            else:
                missing.setdefault(panel, []).append(key)
    stale = [int(as_number(row["pipeline/staleness"])) for row in rows
             if as_number(row.get("pipeline/staleness")) is not None]
    histogram = {str(v): stale.count(v) for v in sorted(set(stale))}  # steps trained at each staleness
    table = {header: _reduce([v for v in (as_number(row.get(key)) for row in rows) if v is not None], how)
             for header, key, how in TABLE}
    return {"run_dir": os.path.abspath(run_dir), "num_steps": len(rows), "series": series, "missing": missing,
            "staleness_histogram": histogram, "table": table}


def _reduce(values: List[float], how: str) -> Any:
    if not values:
        return None
    return {"last": values[-1], "max": max(values), "mean": sum(values) / len(values)}[how]


def _draw_panel(ax: Any, panel: str, runs: Dict[str, Dict[str, Any]]) -> None:
    """Colour = run, line style = metric key; keys a run lacks are noted on the panel."""
    from matplotlib.lines import Line2D

    title, ylabel, keys = PANELS[panel]
    for color, run in enumerate(runs.values()):
        for style, key in zip(LINE_STYLES, keys):
            data = run["series"][panel].get(key)
            if data:
                values = [math.nan if as_number(v) is None else as_number(v) for v in data["value"]]
                ax.plot(data["step"], values, color=f"C{color}", linestyle=style, linewidth=1.4,
                        marker="o" if len(values) <= 30 else None, markersize=3)  # sparse: eval steps
    present = [(s, k) for s, k in zip(LINE_STYLES, keys)
               if any(k in run["series"][panel] for run in runs.values())]
    notes = [f"{label}: {', '.join(run['missing'][panel])}"
             for label, run in runs.items() if panel in run["missing"]]
    if present:
        ax.legend([Line2D([], [], color="black", linestyle=s) for s, _ in present],
                  [k for _, k in present], fontsize=7, loc="best")
    if not present:
        ax.text(0.5, 0.5, "no data:\n" + "\n".join(keys), ha="center", va="center",
                transform=ax.transAxes, fontsize=8, color="gray")
    elif notes:
        ax.text(0.01, 0.01, "missing " + "; ".join(notes), transform=ax.transAxes, fontsize=6,
                color="gray", va="bottom", wrap=True)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _draw_staleness(ax: Any, runs: Dict[str, Dict[str, Any]]) -> None:
    """Steps per staleness (policy versions between generation and training), a bar group per run."""
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs.values()):
        hist = run["staleness_histogram"]
        ax.bar([int(v) + (i - (len(runs) - 1) / 2) * width for v in hist], list(hist.values()), width=width,
               color=f"C{i}")
    if not any(run["staleness_histogram"] for run in runs.values()):
        ax.text(0.5, 0.5, "no data:\npipeline/staleness", ha="center", va="center", transform=ax.transAxes,
                fontsize=8, color="gray")
    ax.set_title("staleness histogram", fontsize=10)
    ax.set_xlabel("policy versions behind", fontsize=8)
    ax.set_ylabel("steps", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, axis="y")


def plot(runs: Dict[str, Dict[str, Any]], png_path: str) -> None:
    """One PNG, a panel per :data:`PANELS` entry, every run overlaid."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cols = 3
    rows = math.ceil((len(PANELS) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, PANELS):
        _draw_panel(ax, panel, runs)
    _draw_staleness(axes.flat[len(PANELS)], runs)
    for ax in list(axes.flat)[len(PANELS) + 1:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=f"C{i}", linewidth=2) for i in range(len(runs))]
    fig.legend(handles, list(runs), loc="upper center", ncol=min(len(runs), 6), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def write_html(runs: Dict[str, Dict[str, Any]], png_path: str, html_path: str) -> None:
    with open(png_path, "rb") as f:
        png = base64.b64encode(f.read()).decode("ascii")
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in TABLE)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{run['num_steps']}</td>"
        + "".join("<td>-</td>" if v is None else f"<td>{v:.4g}</td>" for v in run["table"].values())
        + "</tr>"
        for label, run in runs.items())
    dirs = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(run['run_dir'])}</li>"
                   for label, run in runs.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>rlvr report</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>"
        f"<h1>rlvr report</h1><ul>{dirs}</ul>"
        f"<table><tr><th>run</th><th>steps</th>{head}</tr>{body}</table>"
        f"<p><img alt='rlvr report' style='max-width:100%' src='data:image/png;base64,{png}'></p>"
        "</body></html>")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(page)


def build_report(run_dirs: Sequence[str], out_dir: str) -> Dict[str, str]:
    """Write report.png, report.html and report.json into ``out_dir``; return their paths."""
    runs = {label: collect(run_dir) for label, run_dir in zip(run_labels(run_dirs), run_dirs)}
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"report.{name}") for name in ("png", "html", "json")}
    plot(runs, paths["png"])
    write_html(runs, paths["png"], paths["html"])
    panels = {name: {"title": title, "keys": list(keys)} for name, (title, _, keys) in PANELS.items()}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"png": os.path.basename(paths["png"]), "panels": panels, "runs": runs}, f, indent=1)
    return paths


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rlvr report", description="Plot run directories, overlaid; or a sweep's "
                                "comparison (one SWEEP_DIR written by `rlvr sweep`).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None,
                   help="output directory (default: RUN_DIR for one run, else COMMON_PARENT/report)")
    args = p.parse_args(list(argv))
    if len(args.run_dirs) == 1 and is_sweep(args.run_dirs[0]):  # `rlvr sweep`'s output: the comparison
        for path in write_comparison(args.run_dirs[0]).values():
            print(path)
        return 0
    for run_dir in args.run_dirs:
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            print(f"rlvr report: no metrics.jsonl in {run_dir}", file=sys.stderr)
            return 2
    out = args.out
    if out is None:
        parents = [os.path.dirname(os.path.abspath(d)) for d in args.run_dirs]
        parent = os.path.commonpath(parents)
        out = args.run_dirs[0] if len(args.run_dirs) == 1 else os.path.join(parent, "report")
    paths = build_report(args.run_dirs, out)
    for name in ("png", "html", "json"):
        print(paths[name])
    return 0
