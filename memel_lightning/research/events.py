"""Scalars read back from the TensorBoard event files of a run folder.

Example:
    >>> read_scalars("/nonexistent/run", "val_acc")
    []
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _accumulators(run_dir: str | Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events_dir in sorted({p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        yield acc


def read_all_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar under ``run_dir``, in logging order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for acc in _accumulators(run_dir):
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return out


def read_scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of scalar ``tag`` in the TensorBoard events under ``run_dir``."""
    return read_all_scalars(run_dir).get(tag, [])


def scalar_tags(run_dir: str | Path) -> list[str]:
    return sorted(read_all_scalars(run_dir))


def reduce_metric(values: Sequence[float], reduce: str, mode: str) -> float:
    """The run's value of its metric: the ``last`` logged one or the ``best`` (per ``mode``)."""
    if reduce == "last":
        return float(values[-1])
    return float(max(values) if mode == "max" else min(values))
