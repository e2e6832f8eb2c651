"""The comparison report of a sweep, built from its ``runs.csv``: ``report.{md,csv,png}``.

Only finished runs count; a partial grid gives a partial report (the run counts per
status are in its first lines). Per variant: the metric per seed, mean, std and the
paired difference to the baseline with its p-value; the same for ``mono_ratio`` (final
and training average, overall and per tap); the selection over grid axes when the sweep
has ``select``; the best MEmeL-Tune cell.

Example:
    >>> _num(0.123456), _p(2e-05)
    ('0.1235', '2.00e-05')
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .spec import SweepSpec, fmt_value
from .stats import select_best, summarize

MONO_COLUMNS = ("mono_ratio_final", "mono_ratio_mean")


def _num(x: Any, digits: int = 4, sci: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits - 1}e}" if sci else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return _num(x, 3, sci=not math.isnan(x) and 0 < x < 1e-3)


def _layer_columns(frame) -> list[str]:
    return [c for c in frame.columns if c.startswith("mono_ratio_") and "/" in c]


def build_summary(spec: SweepSpec, runs):
    """The report table: one row per (group, variant) with the metric's and mono_ratio's statistics."""
    chosen = select_best(runs, spec)
    table = summarize(chosen, spec, "value")
    if table.empty:
        return table, chosen
    for column in [c for c in MONO_COLUMNS if c in chosen.columns] + _layer_columns(chosen):
        mono = summarize(chosen, spec, column).set_index(["group", "variant"])
        idx = list(zip(table["group"], table["variant"]))
        table[column] = [mono.loc[i, "mean"] for i in idx]
        table[f"{column}_diff"] = [mono.loc[i, "diff"] for i in idx]
        table[f"{column}_p"] = [mono.loc[i, "p"] for i in idx]
    tune = {v.name: v.tune or {} for v in spec.variants}
    table["k"] = [tune[v].get("k", math.nan) for v in table["variant"]]
    table["delta"] = [tune[v].get("delta", math.nan) for v in table["variant"]]
    return table, chosen


def write_report(spec: SweepSpec, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` in ``out_dir`` from its ``runs.csv``."""
    import pandas as pd

    out = Path(out_dir)
    # grid labels stay text ("3e-05" must not come back as "3e-05" -> 3e-05 -> "3e-05" by luck)
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False, na_values=[""],
                       dtype={"cell": str, "error": str, **{axis: str for axis in spec.axes}})
    runs["cell"] = runs["cell"].fillna("")
    table, chosen = build_summary(spec, runs)
    csv_path = out / "report.csv"
    table.to_csv(csv_path, index=False, float_format="%.10g")
    md_path = out / "report.md"
    md_path.write_text("\n".join(_markdown(spec, runs, table)))
    png_path = out / "report.png"
    plot_report(spec, chosen, table, png_path)
    return {"csv": csv_path, "md": md_path, "png": png_path}


def _markdown(spec: SweepSpec, runs, table) -> list[str]:
    counts = runs["status"].value_counts().to_dict()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "submitted", "pending") if counts.get(s))
    arrow = "higher" if spec.mode == "max" else "lower"
    lines = [
        f"# Sweep `{spec.name}`",
        "",
        f"Runs: {status} (of {len(runs)}). Metric `{spec.metric}` ({spec.reduce} value of each run; {arrow} is "
        f"better), seeds {spec.seeds}. std: sample standard deviation (ddof=1) over seeds; diff: mean paired "
        f"difference to `{spec.baseline}` over the seeds both finished, p: two-sided paired t-test "
        "(scipy.stats.ttest_rel). mono_ratio: `memel/mono_ratio` at the end of training (final) and averaged "
        "over its logging steps (avg), mean over seeds.",
        "",
    ]
    if table.empty:
        return lines + ["No run has finished yet."]
    sci = 0 < np.nanmax(np.abs(runs["value"].to_numpy(np.float64)), initial=0.0) < 0.01

    def num(x: float) -> str:
        return _num(x, sci=sci)

    if spec.select:
        lines += _selection(spec, runs, num)
    for group in dict.fromkeys(table["group"]):
        part = table[table["group"] == group]
        if group:
            lines += [f"## {group}", ""]
        sel = ["selected"] if spec.select else []
        header = ["variant"] + sel + [f"seed {s}" for s in spec.seeds] + ["mean", "std", "diff", "t", "p"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            cells = [f"`{r['variant']}`"] + ([str(r["selected"])] if sel else [])
            cells += [num(r.get(f"seed_{s}", math.nan)) for s in spec.seeds]
            cells += [num(r["mean"]), num(r["std"]), num(r["diff"]), _num(r["t"], 3), _p(r["p"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_mono_table(part), *_tune_lines(spec, part, num)]
    lines += ["![report](report.png)", ""]
    return lines


def _mono_table(part) -> list[str]:
    if "mono_ratio_final" not in part.columns:
        return ["No `memel/mono_ratio` was logged (variants without the callback).", ""]
    layers = sorted({c[len("mono_ratio_final/"):] for c in part.columns if c.startswith("mono_ratio_final/")
                     and not c.endswith(("_diff", "_p"))})
    header = ["variant", "final", "diff", "p", "avg", "diff", "p"]
    lines = ["Monosemantic neuron ratio (all taps):", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in part.iterrows():
        cells = [f"`{r['variant']}`"]
        for c in MONO_COLUMNS:
            cells += [_num(r[c]), _num(r[f"{c}_diff"]), _p(r[f"{c}_p"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if layers:
        header = ["variant"] + [f"{t} {what}" for t in layers for what in ("final", "diff", "p", "avg")]
        lines += ["Per tap (final: diff and p to the baseline; avg: training average):", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            cells = [f"`{r['variant']}`"]
            for t in layers:
                c = f"mono_ratio_final/{t}"
                cells += [_num(r[c]), _num(r[f"{c}_diff"]), _p(r[f"{c}_p"]), _num(r[f"mono_ratio_mean/{t}"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _selection(spec: SweepSpec, runs, num) -> list[str]:
    """Mean metric of every setting of the selected axes, per group and variant; the pick in bold."""
    from .stats import group_axes

    done = runs[runs["status"] == "done"]
    if done.empty:
        return []
    groups = group_axes(spec)
    settings = list(dict.fromkeys(",".join(c.label(a) for a in spec.select) for c in spec.cells))
    axis = ",".join(spec.select)
    lines = [f"Selection of `{axis}` on the mean `{spec.metric}` over seeds ({'max' if spec.mode == 'max' else 'min'}):", "",
             "| " + " | ".join(["group", "variant"] + [f"{axis}={s}" for s in settings]) + " |",
             "|" + "---|" * (len(settings) + 2)]
    keys = done[groups].astype(str).agg(",".join, axis=1) if groups else None
    for group in dict.fromkeys(keys) if groups else [""]:
        part = done[keys == group] if groups else done
        for v in spec.variants:
            mine = part[part["variant"] == v.name]
            if mine.empty:
                continue
            label = mine[list(spec.select)].astype(str).agg(",".join, axis=1)
            means = {s: mine[label == s]["value"].mean() for s in settings}
            best = (max if spec.mode == "max" else min)([m for m in means.values() if not math.isnan(m)])
            cells = [group, f"`{v.name}`"] + [
                f"**{num(m)}**" if m == best else num(m) for m in (means[s] for s in settings)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _tune_lines(spec: SweepSpec, part, num) -> list[str]:
    cells = part[~part["k"].isna() & ~part["mean"].isna()] if "k" in part else part.iloc[:0]
    tune = {v.name: v.tune for v in spec.variants if v.tune}
    cells = cells[cells["variant"].isin(tune)]
    if cells.empty:
        return []
    best = cells.loc[cells["mean"].idxmax() if spec.mode == "max" else cells["mean"].idxmin()]
    desc = ", ".join(f"{k}={fmt_value(v)}" for k, v in tune[best["variant"]].items())
    line = f"**Best MEmeL-Tune cell**: `{best['variant']}` ({desc}): mean {spec.metric} {num(best['mean'])}"
    if not math.isnan(best["diff"]):
        line += f", diff to baseline {num(best['diff'])} (p={_p(best['p'])})"
    lines = [line, ""]
    keys = list(tune[best["variant"]])
    if len(keys) == 2:
        a, b = keys
        grid = {(tune[r["variant"]][a], tune[r["variant"]][b]): r["mean"] for _, r in cells.iterrows()}
        avals, bvals = sorted({x for x, _ in grid}), sorted({y for _, y in grid})
        lines += [f"Mean {spec.metric} over the grid (rows {a}, columns {b}):", "",
                  "| " + " | ".join([f"{a} \\ {b}"] + [fmt_value(x) for x in bvals]) + " |",
                  "|" + "---|" * (len(bvals) + 1)]
        for x in avals:
            lines.append("| " + " | ".join([fmt_value(x)] + [num(grid.get((x, y), math.nan)) for y in bvals]) + " |")
        lines.append("")
    return lines


def mono_curves(chosen, variant: str, group: str) -> list[list[tuple[int, float]]]:
    """The ``memel/mono_ratio`` curves (from ``done.json``) of a variant's chosen runs."""
    curves = []
    for run_dir in chosen[(chosen["variant"] == variant) & (chosen["group"] == group)]["run_dir"]:
        info = json.loads((Path(run_dir) / "done.json").read_text())
        points = info.get("curves", {}).get("all")
        if points:
            curves.append([(int(s), float(v)) for s, v in points])
    return curves


def plot_report(spec: SweepSpec, chosen, table, path: Path) -> None:
    """Per group: the metric per variant, the paired differences to the baseline (metric and
    final mono_ratio, mean and seeds), and mono_ratio over training (mean, min-max band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(table["group"])) if not table.empty else [""]
    fig, axes = plt.subplots(len(groups), 4, figsize=(20, 4.6 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups):
        part = table[table["group"] == group] if not table.empty else table
        _bars(row[0], part, spec, [f"seed_{s}" for s in spec.seeds], "mean", spec.metric,
              f"{spec.metric} per variant (bar: mean, points: seeds)")
        _diffs(row[1], chosen, spec, group, "value", f"{spec.metric}: paired diff to {spec.baseline}")
        _diffs(row[2], chosen, spec, group, "mono_ratio_final", f"mono_ratio (final): paired diff to {spec.baseline}")
        _curves(row[3], chosen, spec, group)
        if group:
            row[0].set_title(f"{group}\n{row[0].get_title()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _bars(ax, part, spec: SweepSpec, seed_cols: Sequence[str], mean_col: str, ylabel: str, title: str) -> None:
    names = list(part["variant"]) if len(part) else []
    x = np.arange(len(names))
    ax.bar(x, part[mean_col] if len(part) else [], color="#c6dbef",
           yerr=[0 if math.isnan(s) else s for s in part["std"]] if len(part) else None)
    points = []
    for i, (_, r) in enumerate(part.iterrows()):
        ys = [r[c] for c in seed_cols if c in r and not math.isnan(r[c])]
        points += ys
        ax.scatter(i + np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else [i] * len(ys), ys,
                   color="#08519c", zorder=3, s=14)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    if points:
        lo, hi = min(points), max(points)
        pad = (hi - lo) * 0.2 or abs(hi) * 0.05 or 0.05
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_title(title, fontsize=9)


def _diffs(ax, chosen, spec: SweepSpec, group: str, column: str, title: str) -> None:
    part = chosen[chosen["group"] == group] if len(chosen) else chosen
    if spec.baseline is None or column not in part.columns:
        ax.text(0.5, 0.5, f"no baseline or no {column}", ha="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        return
    base = part[part["variant"] == spec.baseline].set_index("seed")[column]
    names, means, points = [], [], []
    for i, v in enumerate(v for v in spec.variants if v.name != spec.baseline):
        mine = part[part["variant"] == v.name].set_index("seed")[column]
        d = np.array([mine[s] - base[s] for s in spec.seeds if s in mine.index and s in base.index], dtype=np.float64)
        d = d[~np.isnan(d)]
        names.append(v.name)
        means.append(d.mean() if d.size else math.nan)
        ax.scatter(i + np.linspace(-0.15, 0.15, d.size) if d.size > 1 else [i] * d.size, d, color="#a50f15", zorder=3, s=14)
        points += list(d)
    ax.bar(np.arange(len(names)), np.nan_to_num(means), color="#fcbba1")
    if points:
        lo, hi = min(points + [0.0]), max(points + [0.0])
        pad = (hi - lo) * 0.15 or 0.01
        ax.set_ylim(lo - pad, hi + pad)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_title(title + " (bar: mean, points: seeds)", fontsize=9)


def _curves(ax, chosen, spec: SweepSpec, group: str) -> None:
    plotted = False
    for v in spec.variants:
        curves = mono_curves(chosen, v.name, group) if len(chosen) else []
        if not curves:
            continue
        steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
        values = np.array([[dict(c)[s] for s in steps] for c in curves], dtype=np.float64)
        style = dict(lw=2.0, color="k") if v.name == spec.baseline else dict(lw=1.0)
        (line,) = ax.plot(steps, values.mean(0), label=v.name, **style)
        if len(curves) > 1:
            ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15, lw=0)
        plotted = True
    ax.set_xlabel("training step")
    ax.set_ylabel("memel/mono_ratio")
    ax.set_title("mono_ratio during training (line: mean, band: min-max over seeds)", fontsize=9)
    if plotted:
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.text(0.5, 0.5, "no memel/mono_ratio logged", ha="center", transform=ax.transAxes)
