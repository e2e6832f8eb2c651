"""Statistics of a sweep's runs table: selection over grid axes, per-variant summaries, paired tests.

Runs are paired by seed: a variant's run with seed s against the baseline's run with
seed s in the same group (the grid cell, or what is left of it after selecting over axes).
``diff`` is the mean of the paired differences, ``p`` the two-sided paired t-test
(``scipy.stats.ttest_rel``), both over the seeds where both runs have a value. When
the paired differences do not vary (all equal up to rounding), t is undefined and t, p
are NaN (scipy would return a rounding artefact such as p = 1e-16).

Example:
    >>> r = paired_test([0.9, 0.8, 0.7], [0.8, 0.8, 0.6])
    >>> round(r.diff, 4), r.n
    (0.0667, 3)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .spec import SweepSpec


@dataclass(frozen=True)
class Paired:
    diff: float
    t: float
    p: float
    n: int


def paired_test(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Mean paired difference ``a - b`` and the paired t-test (NaN below two pairs)."""
    from scipy import stats

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_test needs equally long samples, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size == 0:
        return Paired(math.nan, math.nan, math.nan, 0)
    d = x - y
    diff = float(d.mean())
    if x.size < 2 or float(d.std()) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return Paired(diff, math.nan, math.nan, int(x.size))
    res = stats.ttest_rel(x, y)
    return Paired(diff, float(res.statistic), float(res.pvalue), int(x.size))


def group_axes(spec: SweepSpec) -> list[str]:
    """Grid axes that split the report into separate comparisons (all but the selected ones)."""
    return [a for a in spec.axes if a not in spec.select]


def select_best(frame, spec: SweepSpec):
    """Finished runs of the best value of ``spec.select``'s axes per variant and group.

    For each (variant, group) the candidate settings of the selected axes are ranked by
    their mean metric over seeds (``spec.mode``); ties go to the first in grid order. The
    returned frame keeps the finished runs of the winner, with a ``group`` column (the
    labels of the other axes, ``""`` without them) and a ``selected`` column.
    """
    import pandas as pd

    done = frame[frame["status"] == "done"].copy()
    groups = group_axes(spec)
    done["group"] = _labels(done, groups)
    done["selected"] = _labels(done, spec.select)
    if not spec.select or done.empty:
        return done
    order: dict[str, int] = {}
    for i, cell in enumerate(spec.cells):
        order.setdefault(",".join(f"{a}={cell.label(a)}" for a in spec.select), i)
    kept = []
    for _, part in done.groupby(["variant", "group"], sort=False):
        means = part.groupby("selected", sort=False)["value"].mean().to_frame("mean")
        means["first"] = [order.get(label, len(order)) for label in means.index]
        means = means.sort_values(["mean", "first"], ascending=[spec.mode == "min", True])
        kept.append(part[part["selected"] == means.index[0]])
    return pd.concat(kept)


def _labels(frame, axes: Sequence[str]):
    if not axes:
        return [""] * len(frame)
    return [",".join(f"{a}={row[a]}" for a in axes) for _, row in frame[list(axes)].astype(str).iterrows()]


def summarize(chosen, spec: SweepSpec, column: str = "value"):
    """One row per (group, variant): ``seed_<s>`` values of ``column``, mean, std (ddof=1),
    n, and the paired ``diff``/``t``/``p``/``n_pairs`` against the baseline."""
    import pandas as pd

    rows = []
    groups = list(dict.fromkeys(chosen["group"])) if len(chosen) else []
    for group in groups:
        part = chosen[chosen["group"] == group]
        base = part[part["variant"] == spec.baseline].set_index("seed")[column] if spec.baseline else None
        for v in spec.variants:
            mine = part[part["variant"] == v.name].set_index("seed")[column]
            if mine.empty:
                continue
            values = mine.to_numpy(np.float64)
            finite = values[~np.isnan(values)]
            row = {"group": group, "variant": v.name,
                   "selected": part[part["variant"] == v.name]["selected"].iloc[0]}
            row.update({f"seed_{s}": float(mine.get(s, math.nan)) for s in spec.seeds})
            row.update(mean=float(finite.mean()) if finite.size else math.nan,
                       std=float(finite.std(ddof=1)) if finite.size > 1 else math.nan, n=int(finite.size))
            paired = Paired(math.nan, math.nan, math.nan, 0)
            if base is not None and v.name != spec.baseline and not base.empty:
                seeds = [s for s in spec.seeds if s in mine.index and s in base.index]
                paired = paired_test([mine[s] for s in seeds], [base[s] for s in seeds])
            row.update(diff=paired.diff, t=paired.t, p=paired.p, n_pairs=paired.n)
            rows.append(row)
    return pd.DataFrame(rows)
