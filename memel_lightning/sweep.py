"""MEmeL-Tune sweeps and comparisons: ``python cli.py sweep --config base.yaml --sweep sweep.yaml``.

A sweep file (YAML) names the variants to compare and the seeds::

    name: digits_comparison
    base: configs/toy_memel.yaml     # default for --config
    metric: val_acc                  # a logged validation metric
    mode: max                        # max or min: which direction is better
    reduce: last                     # last or best value of the metric over the run
    baseline: baseline               # the variant every other one is compared with
    seeds: [0, 1, 2]
    overrides: {trainer.max_epochs: 5}       # dotted keys, applied to every run
    memel: {late_start: 10}                  # for every variant that keeps the callback
    callback_args: {log_every_n_steps: 5}    # likewise, merged into the callback's init_args
    variants:
      baseline: {callback: false}            # no MEmeLCallback in trainer.callbacks
      naive_a: {memel: {strategy: mean_nograd}}
      naive_b: {memel: {strategy: mean_passthrough}}
      memel:   {memel: {strategy: reverse, k: 1, delta: 1.0}}
    tune:                                    # MEmeL-Tune (SPEC section 6): a grid of variants
      prefix: tune
      memel: {strategy: reverse}
      grid: {k: [1, 5, 10, 50, 100], delta: [1, 5, 10, 50, 100]}

A variant may hold ``callback: false``, ``memel: {...}`` (merged into the callback's
``init_args.memel``), ``callback_args: {...}`` (merged into its ``init_args``, e.g.
``taps``), ``overrides: {dotted.key: value}`` and ``config: other_base.yaml``. Each run
lives in ``<out>/<variant>/seed_<s>/`` with the config it was given (``sweep_config.yaml``),
the config LightningCLI resolved (``config.yaml``), its TensorBoard events and, once it
finished, ``done.json`` (written atomically): a sweep started again skips those runs and
restarts the others from scratch. At the end :func:`write_report` writes ``report.md``,
``report.csv`` and ``report.png``.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import yaml

CALLBACK_NAME = "MEmeLCallback"
DEFAULT_CALLBACK_PATH = "memel_lightning.MEmeLCallback"
DONE = "done.json"
MONO_TAG = "memel/mono_ratio"


class SweepConfigError(ValueError):
    """A sweep file or a base config it names is missing or malformed."""


@dataclass
class Variant:
    """One arm of the comparison: how the base config is changed."""

    name: str
    callback: bool = True
    memel: dict = field(default_factory=dict)
    callback_args: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    config: Optional[str] = None
    tune: Optional[dict] = None  # the grid cell {"k": .., "delta": ..} for MEmeL-Tune variants


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring for the format)."""

    name: str
    variants: list[Variant]
    seeds: list[int]
    metric: str = "val_acc"
    mode: str = "max"
    reduce: str = "last"
    baseline: Optional[str] = None
    base: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    path: Optional[str] = None

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


# ---------------------------------------------------------------------- parsing
def _cell_name(prefix: str, cell: Mapping[str, Any]) -> str:
    return prefix + "_" + "_".join(f"{k}{_fmt(v)}" for k, v in cell.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_sweep(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> SweepSpec:
    """Read a sweep file; ``overrides`` (dotted keys) are added to its ``overrides``."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise SweepConfigError(f"sweep file {path}: expected a mapping at the top level")
    known = {"name", "base", "metric", "mode", "reduce", "baseline", "seeds", "overrides", "variants", "tune",
             "memel", "callback_args"}
    unknown = set(raw) - known
    if unknown:
        raise SweepConfigError(f"sweep file {path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    variants: list[Variant] = []
    for name, body in (raw.get("variants") or {}).items():
        variants.append(_parse_variant(path, str(name), body or {}))
    tune = raw.get("tune")
    if tune:
        grid = tune.get("grid") or {}
        if not grid:
            raise SweepConfigError(f"sweep file {path}: tune needs a non-empty grid, e.g. {{k: [1, 5], delta: [1, 5]}}")
        prefix = str(tune.get("prefix", "tune"))
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            cell = dict(zip(keys, values))
            body = {k: v for k, v in tune.items() if k not in ("grid", "prefix")}
            v = _parse_variant(path, _cell_name(prefix, cell), body)
            v.memel = {**v.memel, **cell}
            v.tune = cell
            variants.append(v)
    common_memel = dict(raw.get("memel") or {})
    common_args = dict(raw.get("callback_args") or {})
    for v in variants:  # sweep-wide callback settings, for every variant that keeps the callback
        if v.callback:
            v.memel = {**common_memel, **v.memel}
            v.callback_args = {**common_args, **v.callback_args}
    if not variants:
        raise SweepConfigError(f"sweep file {path}: no variants (give 'variants' and/or 'tune')")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SweepConfigError(f"sweep file {path}: duplicate variant names {names}")
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int):
        seeds = list(range(seeds))
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise SweepConfigError(f"sweep file {path}: mode must be 'max' or 'min', got {mode!r}")
    reduce = raw.get("reduce", "last")
    if reduce not in ("last", "best"):
        raise SweepConfigError(f"sweep file {path}: reduce must be 'last' or 'best', got {reduce!r}")
    baseline = raw.get("baseline")
    if baseline is None and "baseline" in names:
        baseline = "baseline"
    if baseline is not None and baseline not in names:
        raise SweepConfigError(f"sweep file {path}: baseline {baseline!r} is not a variant ({names})")
    merged = dict(raw.get("overrides") or {})
    merged.update(overrides or {})
    return SweepSpec(
        name=str(raw.get("name", path.stem)),
        variants=variants,
        seeds=[int(s) for s in seeds],
        metric=str(raw.get("metric", "val_acc")),
        mode=mode,
        reduce=reduce,
        baseline=baseline,
        base=raw.get("base"),
        overrides=merged,
        path=str(path),
    )


def _parse_variant(path: Path, name: str, body: Mapping[str, Any]) -> Variant:
    known = {"callback", "memel", "callback_args", "overrides", "config"}
    unknown = set(body) - known
    if unknown:
        raise SweepConfigError(f"sweep file {path}: variant {name!r} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return Variant(
        name=name,
        callback=bool(body.get("callback", True)),
        memel=dict(body.get("memel") or {}),
        callback_args=dict(body.get("callback_args") or {}),
        overrides=dict(body.get("overrides") or {}),
        config=body.get("config"),
    )


# ---------------------------------------------------------------------- configs
def set_dotted(config: dict, key: str, value: Any) -> None:
    """``config["a"]["b"][0]["c"] = value`` for ``key="a.b.0.c"`` (creating mappings)."""
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise SweepConfigError(
                    f"override {key!r}: {'.'.join(parts[:i]) or 'config'} is a list of {len(node)} items, "
                    f"{part!r} is not an index of it"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise SweepConfigError(f"override {key!r}: {'.'.join(parts[:i])} is {node!r}, not a mapping or list")


def _is_memel_callback(entry: Any) -> bool:
    return isinstance(entry, dict) and str(entry.get("class_path", "")).endswith(CALLBACK_NAME)


def load_base_config(path: str | Path, sweep_path: Optional[str] = None) -> dict:
    path = Path(path)
    if not path.is_file():
        where = f" (named by sweep file {sweep_path})" if sweep_path else ""
        raise SweepConfigError(
            f"base config {path} does not exist{where}; the sweep needs the domain's config file "
            "(is that domain installed on this branch?) or pass another one with --config"
        )
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise SweepConfigError(f"base config {path}: expected a mapping at the top level")
    return config


def variant_config(base: dict, variant: Variant, seed: int, run_dir: Path, overrides: Mapping[str, Any]) -> dict:
    """The config of one run: ``base`` changed by the sweep's and the variant's settings."""
    config = copy.deepcopy(base)
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    callbacks = trainer.get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    if not variant.callback:
        callbacks = [c for c in callbacks if not _is_memel_callback(c)]
    else:
        mine = [c for c in callbacks if _is_memel_callback(c)]
        if not mine and (variant.memel or variant.callback_args):
            entry = {"class_path": DEFAULT_CALLBACK_PATH, "init_args": {"taps": "default", "memel": {}}}
            callbacks.append(entry)
            mine = [entry]
        for entry in mine:
            init = entry.setdefault("init_args", {}) or {}
            entry["init_args"] = init
            init.update(copy.deepcopy(variant.callback_args))
            init["memel"] = {**(init.get("memel") or {}), **variant.memel}
    trainer["callbacks"] = callbacks
    config["seed_everything"] = int(seed)
    trainer["default_root_dir"] = str(run_dir)
    # Every run logs to its own folder with TensorBoard: the report reads the events back.
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
    }
    for key, value in {**dict(overrides), **variant.overrides}.items():
        set_dotted(config, key, copy.deepcopy(value))
    return config


# ---------------------------------------------------------------------- events
def read_scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of scalar ``tag`` in the TensorBoard events under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: list[tuple[int, float]] = []
    for events_dir in sorted({p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return out


def scalar_tags(run_dir: str | Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events_dir in {p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")}:
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tags.update(acc.Tags()["scalars"])
    return sorted(tags)


def reduce_metric(values: Sequence[float], reduce: str, mode: str) -> float:
    if reduce == "last":
        return float(values[-1])
    return float(max(values) if mode == "max" else min(values))


# ---------------------------------------------------------------------- running
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fit_in_process(config_path: Path) -> None:
    """Run ``cli.py fit --config config_path`` in this process."""
    from .cli import main

    saved = sys.argv
    sys.argv = saved[:1]  # LightningCLI warns when it sees both args and a command line
    try:
        main(["fit", "--config", str(config_path)], run=True)
    finally:
        sys.argv = saved


def fit_in_subprocess(config_path: Path) -> None:
    """Run ``python -m memel_lightning.cli fit --config config_path`` in a child process."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-m", "memel_lightning.cli", "fit", "--config", str(config_path)], check=True, env=env)


@dataclass
class RunResult:
    variant: str
    seed: int
    value: float
    run_dir: str
    skipped: bool = False


def run_sweep(
    spec: SweepSpec,
    base_config: Optional[str | Path] = None,
    out_dir: Optional[str | Path] = None,
    launcher: str | Callable[[Path], None] = "inprocess",
    only: Optional[Iterable[str]] = None,
    report: bool = True,
) -> list[RunResult]:
    """Run every (variant, seed) of ``spec`` sequentially; finished runs are skipped.

    ``base_config`` defaults to the sweep file's ``base``; a variant's own ``config``
    replaces it for that variant. ``launcher`` is ``"inprocess"`` (LightningCLI in this
    process), ``"subprocess"`` or a callable taking the run's config path. ``only``
    restricts the sweep to some variants. Writes the report at the end.

    Example:
        >>> spec = load_sweep("configs/sweeps/digits.yaml")            # doctest: +SKIP
        >>> run_sweep(spec, out_dir="runs/sweeps/digits")              # doctest: +SKIP
    """
    base_path = base_config or spec.base
    if base_path is None and any(v.config is None for v in spec.variants):
        raise SweepConfigError(f"sweep {spec.path}: no base config; pass --config or set 'base' in the sweep file")
    bases: dict[str, dict] = {}

    def base_for(v: Variant) -> dict:
        p = str(v.config or base_path)
        if p not in bases:
            bases[p] = load_base_config(p, spec.path)
        return bases[p]

    selected = [v for v in spec.variants if only is None or v.name in set(only)]
    for v in selected:  # fail before the first run if any base config is missing
        base_for(v)
    out = Path(out_dir or Path("runs") / "sweeps" / spec.name)
    out.mkdir(parents=True, exist_ok=True)
    if spec.path:
        shutil.copyfile(spec.path, out / "sweep.yaml")
    fit = {"inprocess": fit_in_process, "subprocess": fit_in_subprocess}.get(launcher, launcher)
    if not callable(fit):
        raise ValueError(f"launcher must be 'inprocess', 'subprocess' or a callable, got {launcher!r}")

    results: list[RunResult] = []
    for v in selected:
        for seed in spec.seeds:
            run_dir = out / v.name / f"seed_{seed}"
            done = run_dir / DONE
            if done.is_file():
                info = json.loads(done.read_text())
                results.append(RunResult(v.name, seed, float(info["value"]), str(run_dir), skipped=True))
                print(f"[sweep] {v.name} seed {seed}: finished before ({spec.metric}={info['value']:.6g}), skipped", flush=True)
                continue
            if run_dir.exists():  # an interrupted run: start it again from scratch
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            config = variant_config(base_for(v), v, seed, run_dir, spec.overrides)
            config_path = run_dir / "sweep_config.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            print(f"[sweep] {v.name} seed {seed}: running in {run_dir}", flush=True)
            try:
                fit(config_path)
            except BaseException as exc:
                (run_dir / "error.txt").write_text(traceback.format_exc())
                raise RuntimeError(f"sweep run {v.name} seed {seed} failed ({run_dir}/error.txt): {exc}") from exc
            values = [val for _, val in read_scalars(run_dir, spec.metric)]
            if not values:
                raise RuntimeError(
                    f"sweep run {v.name} seed {seed}: metric {spec.metric!r} was never logged in {run_dir}; "
                    f"logged tags: {scalar_tags(run_dir)}"
                )
            value = reduce_metric(values, spec.reduce, spec.mode)
            info = {"variant": v.name, "seed": seed, "metric": spec.metric, "reduce": spec.reduce, "value": value,
                    "values": values}
            _write_atomic(done, json.dumps(info, indent=1))
            results.append(RunResult(v.name, seed, value, str(run_dir)))
    if report:
        write_report(spec, out)
    return results


# ---------------------------------------------------------------------- report
@dataclass
class VariantSummary:
    name: str
    values: dict[int, float]
    mean: float
    std: float
    diff: float = math.nan       # mean of (variant - baseline) over paired seeds
    t: float = math.nan
    p: float = math.nan
    n_pairs: int = 0
    mono_ratio_last: float = math.nan
    tune: Optional[dict] = None


def summarize(spec: SweepSpec, out_dir: str | Path) -> list[VariantSummary]:
    """Per variant: metric per seed (from ``done.json``), mean, std (ddof=1) and the
    paired t-test against the baseline over the seeds both finished (``scipy.stats.ttest_rel``)."""
    from scipy import stats

    out = Path(out_dir)
    summaries: list[VariantSummary] = []
    for v in spec.variants:
        values: dict[int, float] = {}
        mono: list[float] = []
        for seed in spec.seeds:
            done = out / v.name / f"seed_{seed}" / DONE
            if done.is_file():
                values[seed] = float(json.loads(done.read_text())["value"])
                curve = read_scalars(done.parent, MONO_TAG)
                if curve:
                    mono.append(curve[-1][1])
        arr = np.array(list(values.values()), dtype=np.float64)
        summaries.append(
            VariantSummary(
                name=v.name,
                values=values,
                mean=float(arr.mean()) if arr.size else math.nan,
                std=float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
                mono_ratio_last=float(np.mean(mono)) if mono else math.nan,
                tune=v.tune,
            )
        )
    if spec.baseline is not None:
        base = next(s for s in summaries if s.name == spec.baseline)
        for s in summaries:
            if s.name == spec.baseline:
                continue
            seeds = [k for k in spec.seeds if k in s.values and k in base.values]
            s.n_pairs = len(seeds)
            if not seeds:
                continue
            a = np.array([s.values[k] for k in seeds], dtype=np.float64)
            b = np.array([base.values[k] for k in seeds], dtype=np.float64)
            s.diff = float((a - b).mean())
            if len(seeds) >= 2:
                res = stats.ttest_rel(a, b)
                s.t, s.p = float(res.statistic), float(res.pvalue)
    return summaries


def best_tune_cell(spec: SweepSpec, summaries: Sequence[VariantSummary]) -> Optional[VariantSummary]:
    cells = [s for s in summaries if s.tune is not None and not math.isnan(s.mean)]
    if not cells:
        return None
    return max(cells, key=lambda s: s.mean) if spec.mode == "max" else min(cells, key=lambda s: s.mean)


def _num(x: float, digits: int = 4, sci: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits - 1}e}" if sci else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return _num(x, 3, sci=not math.isnan(x) and 0 < x < 1e-3)


def write_report(spec: SweepSpec, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` in ``out_dir``."""
    import pandas as pd

    out = Path(out_dir)
    summaries = summarize(spec, out)
    rows = []
    for s in summaries:
        row: dict[str, Any] = {"variant": s.name}
        for seed in spec.seeds:
            row[f"seed_{seed}"] = s.values.get(seed, math.nan)
        row.update(
            mean=s.mean, std=s.std, diff_vs_baseline=s.diff, t=s.t, p=s.p, n_pairs=s.n_pairs,
            mono_ratio_last=s.mono_ratio_last,
            k=(s.tune or {}).get("k", math.nan), delta=(s.tune or {}).get("delta", math.nan),
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    csv_path = out / "report.csv"
    frame.to_csv(csv_path, index=False, float_format="%.10g")

    best = best_tune_cell(spec, summaries)
    arrow = "higher" if spec.mode == "max" else "lower"
    lines = [
        f"# Sweep `{spec.name}`",
        "",
        f"Metric `{spec.metric}` ({spec.reduce} value of each run; {arrow} is better), seeds {spec.seeds}. "
        f"std is the sample standard deviation (ddof=1) over seeds; diff is the mean paired difference "
        f"to `{spec.baseline}` and p the two-sided paired t-test (scipy.stats.ttest_rel) over the seeds "
        "both finished. mono_ratio is the last logged `memel/mono_ratio`, averaged over seeds.",
        "",
    ]
    header = ["variant"] + [f"seed {k}" for k in spec.seeds] + ["mean", "std", "diff", "t", "p", "mono_ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    scale = max([abs(v) for s in summaries for v in s.values.values()] or [1.0])
    sci = 0 < scale < 0.01  # tiny metrics (a reconstruction MSE): scientific notation throughout

    def num(x: float) -> str:
        return _num(x, sci=sci)

    for s in summaries:
        cells = [f"`{s.name}`"] + [num(s.values.get(k, math.nan)) for k in spec.seeds]
        cells += [num(s.mean), num(s.std), num(s.diff), _num(s.t, 3), _p(s.p), _num(s.mono_ratio_last, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None:
        cell = ", ".join(f"{k}={_fmt(v)}" for k, v in best.tune.items())
        lines += ["", f"**Best MEmeL-Tune cell**: `{best.name}` ({cell}): mean {spec.metric} {num(best.mean)}"
                  + (f", diff to baseline {num(best.diff)} (p={_p(best.p)})" if not math.isnan(best.diff) else "")]
        keys = list(best.tune)
        if len(keys) == 2:
            a, b = keys
            avals = sorted({s.tune[a] for s in summaries if s.tune})
            bvals = sorted({s.tune[b] for s in summaries if s.tune})
            grid = {(s.tune[a], s.tune[b]): s.mean for s in summaries if s.tune}
            lines += ["", f"Mean {spec.metric} over the grid (rows {a}, columns {b}):", "",
                      "| " + " | ".join([f"{a} \\ {b}"] + [_fmt(x) for x in bvals]) + " |",
                      "|" + "---|" * (len(bvals) + 1)]
            for x in avals:
                lines.append("| " + " | ".join([_fmt(x)] + [num(grid.get((x, y), math.nan)) for y in bvals]) + " |")
    lines += ["", "![report](report.png)", ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(lines))
    png_path = out / "report.png"
    plot_report(spec, out, summaries, png_path)
    return {"csv": csv_path, "md": md_path, "png": png_path}


def plot_report(spec: SweepSpec, out: Path, summaries: Sequence[VariantSummary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [s.name for s in summaries]
    x = np.arange(len(names))
    ax1.bar(x, [s.mean for s in summaries], color="#c6dbef", yerr=[0 if math.isnan(s.std) else s.std for s in summaries])
    for i, s in enumerate(summaries):
        ys = list(s.values.values())
        ax1.scatter(np.full(len(ys), i) + np.linspace(-0.15, 0.15, len(ys)) if len(ys) > 1 else [i] * len(ys),
                    ys, color="#08519c", zorder=3, s=14)
    ax1.set_xticks(x)
    ax1.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel(spec.metric)
    finite = [v for s in summaries for v in s.values.values()]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = (hi - lo) * 0.2 or abs(hi) * 0.05 or 0.05
        ax1.set_ylim(lo - pad, hi + pad)
    ax1.set_title(f"{spec.metric} per variant (bars: mean, points: seeds)")
    plotted = False
    for s in summaries:
        curves = [read_scalars(out / s.name / f"seed_{k}", MONO_TAG) for k in s.values]
        curves = [c for c in curves if c]
        if not curves:
            continue
        steps = sorted({st for c in curves for st, _ in c})
        mean = [np.mean([dict(c)[st] for c in curves if st in dict(c)]) for st in steps]
        ax2.plot(steps, mean, label=s.name, lw=1)
        plotted = True
    ax2.set_xlabel("training step")
    ax2.set_ylabel(MONO_TAG)
    ax2.set_title("monosemantic neuron ratio during training (mean over seeds)")
    if plotted:
        ax2.legend(fontsize=6, ncol=2)
    else:
        ax2.text(0.5, 0.5, "no memel/mono_ratio logged", ha="center", transform=ax2.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------- command line
def parse_overrides(items: Optional[Sequence[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SweepConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def sweep_main(argv: Optional[Sequence[str]] = None) -> list[RunResult]:
    """``cli.py sweep --config base.yaml --sweep sweep.yaml [--out DIR] [--set key=value ...]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="cli.py sweep", description="Run a comparison / MEmeL-Tune sweep and write report.{md,csv,png}."
    )
    parser.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/<domain>.yaml)")
    parser.add_argument("--config", default=None, help="base config; default: the sweep file's 'base'")
    parser.add_argument("--out", default=None, help="output folder; default runs/sweeps/<sweep name>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, dotted key, e.g. trainer.max_epochs=1 (repeatable)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="replace the sweep file's seeds")
    parser.add_argument("--launcher", choices=("inprocess", "subprocess"), default="inprocess")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the report of finished runs")
    args = parser.parse_args(argv)
    spec = load_sweep(args.sweep, parse_overrides(args.set))
    if args.seeds:
        spec.seeds = list(args.seeds)
    if args.report_only:
        out = Path(args.out or Path("runs") / "sweeps" / spec.name)
        paths = write_report(spec, out)
        print(paths["md"].read_text())
        return []
    results = run_sweep(spec, base_config=args.config, out_dir=args.out, launcher=args.launcher, only=args.only)
    out = Path(args.out or Path("runs") / "sweeps" / spec.name)
    print((out / "report.md").read_text())
    return results
