"""The state of every run of a sweep, as files in its folder and as one table (``runs.csv``).

A run folder holds ``done.json`` once the run finished (its summary, written atomically),
``failed.json`` when it raised, ``job.json`` while a cluster job holds it. The table has
one row per (variant, cell, seed) of the sweep, whatever its state, so a report can be
written from a partial grid.

Monosemanticity of a run (read from its TensorBoard events): ``mono_ratio_final`` is the
last logged ``memel/mono_ratio``, ``mono_ratio_mean`` the mean over all its logging
steps (the training average); the same per tap from ``memel/<tap>/mono_ratio``.

Example:
    >>> run_status(Path("/nonexistent/run"))
    'pending'
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from .events import read_all_scalars, reduce_metric
from .spec import RunKey, SweepSpec

DONE = "done.json"
FAILED = "failed.json"
JOB = "job.json"
MONO_TAG = "memel/mono_ratio"
# Kill-concentration: logged as memel/fkr by older versions, as memel/kill_concentration now;
# memel/fkr is the labelled False Killing Rate where labels exist. Both are read when present.
EXTRA_TAGS = {"kill_concentration": "memel/kill_concentration", "fkr": "memel/fkr"}
STATUSES = ("done", "failed", "submitted", "pending")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_status(run_dir: Path) -> str:
    """``done``, ``failed``, ``submitted`` (a job was started and has not reported) or ``pending``."""
    if (run_dir / DONE).is_file():
        return "done"
    if (run_dir / FAILED).is_file():
        return "failed"
    if (run_dir / JOB).is_file():
        return "submitted"
    return "pending"


def _tap_of(tag: str) -> Optional[str]:
    if tag.startswith("memel/") and tag.endswith("/mono_ratio") and tag != MONO_TAG:
        return tag[len("memel/"):-len("/mono_ratio")]
    return None


def summarize_run(run_dir: Path, metric: str, reduce: str, mode: str) -> dict[str, Any]:
    """The run's metric value and monosemanticity from its events; raises if the metric is missing."""
    scalars = read_all_scalars(run_dir)
    values = [v for _, v in scalars.get(metric, [])]
    if not values:
        raise RuntimeError(f"metric {metric!r} was never logged in {run_dir}; logged tags: {sorted(scalars)}")
    mono: dict[str, dict[str, float]] = {}
    curves: dict[str, list[list[float]]] = {}
    for tag, points in scalars.items():
        layer = "all" if tag == MONO_TAG else _tap_of(tag)
        if layer is None or not points:
            continue
        series = [v for _, v in points]
        mono[layer] = {"final": series[-1], "mean": float(sum(series) / len(series))}
        curves[layer] = [[s, v] for s, v in points]
    extra = {name: scalars[tag][-1][1] for name, tag in EXTRA_TAGS.items() if scalars.get(tag)}
    return {"metric": metric, "reduce": reduce, "value": reduce_metric(values, reduce, mode), "values": values,
            "mono_ratio": mono, "final": extra, "curves": curves}


def runs_table(spec: SweepSpec, out: Path, only: Optional[Sequence[str]] = None):
    """A ``pandas.DataFrame`` with one row per run of ``spec`` under ``out`` (any status)."""
    import pandas as pd

    rows = [_row(spec, key, key.run_dir(out)) for key in spec.runs(only)]
    frame = pd.DataFrame(rows)
    fixed = [c for c in frame.columns if not c.startswith("mono_ratio_")]
    layers = sorted(c for c in frame.columns if c.startswith("mono_ratio_") and "/" in c)
    overall = [c for c in ("mono_ratio_final", "mono_ratio_mean") if c in frame.columns]
    return frame[fixed[:fixed.index("value") + 1] + overall + layers + fixed[fixed.index("value") + 1:]]


def _row(spec: SweepSpec, key: RunKey, run_dir: Path) -> dict[str, Any]:
    variant = spec.variant(key.variant)
    row: dict[str, Any] = {"variant": key.variant, "cell": key.cell.name}
    for axis in spec.axes:
        row[axis] = key.cell.label(axis)
    row["seed"] = key.seed
    status = run_status(run_dir)
    row.update(status=status, metric=spec.metric, value=math.nan, mono_ratio_final=math.nan,
               mono_ratio_mean=math.nan)
    row.update({f"{name}_final": math.nan for name in EXTRA_TAGS})
    row.update(wall_s=math.nan, k=(variant.tune or {}).get("k", math.nan),
               delta=(variant.tune or {}).get("delta", math.nan), run_dir=str(run_dir), error="")
    if status == "done":
        info = json.loads((run_dir / DONE).read_text())
        row["value"] = float(info["value"])
        row["wall_s"] = float(info.get("wall_s", math.nan))
        for layer, m in info.get("mono_ratio", {}).items():
            suffix = "" if layer == "all" else f"/{layer}"
            row[f"mono_ratio_final{suffix}"] = m["final"]
            row[f"mono_ratio_mean{suffix}"] = m["mean"]
        for name, value in info.get("final", {}).items():
            row[f"{name}_final"] = value
    elif status == "failed":
        info = json.loads((run_dir / FAILED).read_text())
        row["error"] = str(info.get("error", "")).splitlines()[-1:][0] if info.get("error") else ""
        row["wall_s"] = float(info.get("wall_s", math.nan))
    return row


def write_runs_csv(spec: SweepSpec, out: Path, only: Optional[Sequence[str]] = None) -> Path:
    """Write ``<out>/runs.csv`` (atomically) and return its path."""
    frame = runs_table(spec, out, only)
    path = Path(out) / "runs.csv"
    write_atomic(path, frame.to_csv(index=False, float_format="%.10g"))
    return path
