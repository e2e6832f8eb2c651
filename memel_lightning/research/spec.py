"""Sweep files: what to compare, over which grid, with which seeds, launched how.

A sweep file (YAML) names the variants (arms of the comparison), an optional grid of
dotted config overrides crossed with every variant, the seeds, and how to choose and
compare::

    name: digits_comparison
    base: configs/toy_memel.yaml     # the one base config every variant is composed from
    metric: val_acc                  # a logged validation metric
    mode: max                        # max or min: which direction is better
    reduce: last                     # last or best value of the metric over the run
    baseline: baseline               # the variant every other one is compared with
    seeds: [0, 1, 2]
    overrides: {trainer.max_epochs: 5}       # dotted keys, applied to every run
    memel: {late_start: 10}                  # for every variant that keeps the callback
    callback_args: {log_every_n_steps: 5}    # likewise, merged into the callback's init_args
    variants:
      baseline: {memel: {strategy: none}}    # observed baseline: statistics only
      naive_a: {memel: {strategy: mean_nograd}}
      memel:   {memel: {strategy: reverse, k: 1, delta: 1.0}}
    tune:                                    # MEmeL-Tune (docs/method.md §7): one variant per cell
      prefix: tune
      memel: {strategy: reverse}
      grid: {k: [1, 5, 10], delta: [1, 5, 10]}
    grid:                                    # crossed with every variant: runs per cell
      model.init_args.lr: [2.0e-5, 3.0e-5]   # a dotted key and its values, or a named axis:
      task: {rte: {data.init_args.task: rte}, mrpc: {data.init_args.task: mrpc}}
    select: [model.init_args.lr]             # report the best value of these axes per variant
    launcher: {name: submitit, gpus_per_node: 8, timeout_min: 600, slurm_partition: gpu}

Example:
    >>> cell = Cell((("lr", "3e-05"),), (("model.init_args.lr", 3e-05),))
    >>> RunKey("memel", cell, seed=0).run_dir(Path("out")).as_posix()
    'out/memel/lr=3e-05/seed_0'
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import yaml


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
    tune: Optional[dict] = None  # the MEmeL-Tune cell {"k": .., "delta": ..} of a tune variant


@dataclass(frozen=True)
class Cell:
    """One point of the sweep's ``grid``: a label per axis and the dotted overrides it sets."""

    labels: tuple[tuple[str, str], ...] = ()  # ((axis, value label), ...) in grid order
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """``""`` for the single cell of a sweep without grid, else ``axis=value,...``."""
        return ",".join(f"{axis}={label}" for axis, label in self.labels)

    @property
    def folder(self) -> str:
        return self.name.replace("/", "_")

    def label(self, axis: str) -> str:
        return dict(self.labels)[axis]


@dataclass(frozen=True)
class RunKey:
    """One run of a sweep: a variant in a grid cell with a seed."""

    variant: str
    cell: Cell
    seed: int

    def run_dir(self, out: Path) -> Path:
        """``<out>/<variant>[/<cell>]/seed_<s>`` (no cell level without a grid)."""
        base = Path(out) / self.variant
        if self.cell.labels:
            base = base / self.cell.folder
        return base / f"seed_{self.seed}"


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
    cells: list[Cell] = field(default_factory=lambda: [Cell()])
    axes: list[str] = field(default_factory=list)
    select: list[str] = field(default_factory=list)
    launcher: dict = field(default_factory=dict)
    path: Optional[str] = None

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def runs(self, only: Optional[Sequence[str]] = None) -> Iterator[RunKey]:
        """Every (variant, cell, seed), variants outermost; ``only`` keeps some variants."""
        for v in self.variants:
            if only is not None and v.name not in set(only):
                continue
            for cell in self.cells:
                for seed in self.seeds:
                    yield RunKey(v.name, cell, seed)


TOP_KEYS = {"name", "base", "metric", "mode", "reduce", "baseline", "seeds", "overrides", "variants", "tune",
            "memel", "callback_args", "grid", "select", "launcher"}
VARIANT_KEYS = {"callback", "memel", "callback_args", "overrides", "config"}


def fmt_value(value: Any) -> str:
    """A short label of a grid value: ``1.0 -> 1``, ``3e-05 -> 3e-05``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell_name(prefix: str, cell: Mapping[str, Any]) -> str:
    return prefix + "_" + "_".join(f"{k}{fmt_value(v)}" for k, v in cell.items())


def load_sweep(path: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> SweepSpec:
    """Read a sweep file; ``overrides`` (dotted keys) are added to its ``overrides``."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise SweepConfigError(f"sweep file {path}: expected a mapping at the top level")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SweepConfigError(f"sweep file {path}: unknown keys {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    variants = [_parse_variant(path, str(name), body or {}) for name, body in (raw.get("variants") or {}).items()]
    variants += _tune_variants(path, raw.get("tune"))
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
    axes, cells = _parse_grid(path, raw.get("grid"))
    select = raw.get("select") or []
    select = [select] if isinstance(select, str) else [str(s) for s in select]
    missing = [s for s in select if s not in axes]
    if missing:
        raise SweepConfigError(f"sweep file {path}: select names {missing}, which are not grid axes {axes}")
    launcher = raw.get("launcher") or {}
    if not isinstance(launcher, dict):
        raise SweepConfigError(f"sweep file {path}: launcher must be a mapping, e.g. {{name: submitit, gpus_per_node: 1}}")
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
        cells=cells,
        axes=axes,
        select=select,
        launcher=dict(launcher),
        path=str(path),
    )


def _parse_variant(path: Path, name: str, body: Mapping[str, Any]) -> Variant:
    if not isinstance(body, Mapping):
        raise SweepConfigError(f"sweep file {path}: variant {name!r} must be a mapping, got {body!r}")
    unknown = set(body) - VARIANT_KEYS
    if unknown:
        raise SweepConfigError(
            f"sweep file {path}: variant {name!r} has unknown keys {sorted(unknown)}; known: {sorted(VARIANT_KEYS)}"
        )
    return Variant(
        name=name,
        callback=bool(body.get("callback", True)),
        memel=dict(body.get("memel") or {}),
        callback_args=dict(body.get("callback_args") or {}),
        overrides=dict(body.get("overrides") or {}),
        config=body.get("config"),
    )


def _tune_variants(path: Path, tune: Optional[Mapping[str, Any]]) -> list[Variant]:
    if not tune:
        return []
    grid = tune.get("grid") or {}
    if not grid:
        raise SweepConfigError(f"sweep file {path}: tune needs a non-empty grid, e.g. {{k: [1, 5], delta: [1, 5]}}")
    prefix = str(tune.get("prefix", "tune"))
    body = {k: v for k, v in tune.items() if k not in ("grid", "prefix")}
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        cell = dict(zip(keys, values))
        v = _parse_variant(path, _cell_name(prefix, cell), body)
        v.memel = {**v.memel, **cell}
        v.tune = cell
        out.append(v)
    return out


def _parse_grid(path: Path, grid: Any) -> tuple[list[str], list[Cell]]:
    """Axes and the cross product of their values.

    An axis is ``dotted.key: [v1, v2]`` (labels are the values) or ``name: {label:
    {dotted.key: value, ...}}`` (a named axis whose values set several keys together).
    """
    if not grid:
        return [], [Cell()]
    if not isinstance(grid, Mapping):
        raise SweepConfigError(f"sweep file {path}: grid must map axes to values, e.g. {{model.init_args.lr: [2.0e-5, 3.0e-5]}}")
    axes: list[str] = []
    choices: list[list[tuple[str, dict]]] = []
    for axis, values in grid.items():
        axis = str(axis)
        if isinstance(values, Mapping) and values:
            opts = []
            for label, sets in values.items():
                if not isinstance(sets, Mapping) or not sets:
                    raise SweepConfigError(
                        f"sweep file {path}: grid axis {axis!r} value {label!r} must map dotted keys to values"
                    )
                opts.append((str(label), dict(sets)))
        elif isinstance(values, list) and values:
            opts = [(fmt_value(v), {axis: v}) for v in values]
        else:
            raise SweepConfigError(
                f"sweep file {path}: grid axis {axis!r} needs a non-empty list of values or a mapping of labels, got {values!r}"
            )
        labels = [label for label, _ in opts]
        if len(set(labels)) != len(labels):
            raise SweepConfigError(f"sweep file {path}: grid axis {axis!r} has duplicate values {labels}")
        axes.append(axis)
        choices.append(opts)
    cells = []
    for combo in itertools.product(*choices):
        labels = tuple((axis, label) for axis, (label, _) in zip(axes, combo))
        sets = tuple((k, v) for _, kv in combo for k, v in kv.items())
        cells.append(Cell(labels, sets))
    return axes, cells


def parse_overrides(items: Optional[Sequence[str]]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"] -> {"a.b": 1, "c": [1, 2]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SweepConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out
