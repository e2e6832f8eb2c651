"""A sweep end to end: prepare each run's folder and config, launch what is left, report.

Each run lives in ``<out>/<variant>[/<cell>]/seed_<s>/`` with the config it was given
(``sweep_config.yaml``), the config LightningCLI resolved (``config.yaml``), its
TensorBoard events and its state files (:mod:`memel_lightning.research.runs`). A sweep
started again skips finished runs and SLURM jobs still queued or running, and starts the
failed, interrupted and never-started ones again from scratch.

Example:
    >>> spec = load_sweep("configs/sweeps/digits.yaml")                        # doctest: +SKIP
    >>> run_sweep(spec, out_dir="runs/sweeps/digits", launcher="subprocess")   # doctest: +SKIP
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import yaml

from .compose import load_base_config, variant_config
from .launch import FitFn, RunJob, job_active, make_launcher, resolved_config
from .report import write_report
from .runs import run_status, write_runs_csv
from .spec import RunKey, SweepConfigError, SweepSpec


def default_out(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.name


def merged_launcher_options(spec: SweepSpec, options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The sweep file's ``launcher`` mapping updated by the command line's options (``None``: not given).

    SLURM jobs are named after the sweep unless the file names them.
    """
    given = {k: v for k, v in (options or {}).items() if v is not None}
    return {"slurm_job_name": spec.name, **spec.launcher, **given}


def run_sweep(
    spec: SweepSpec,
    base_config: Optional[str | Path] = None,
    out_dir: Optional[str | Path] = None,
    launcher: str | Callable[[Path], None] = "inprocess",
    fit: Optional[FitFn] = None,
    only: Optional[Sequence[str]] = None,
    launcher_options: Optional[Mapping[str, Any]] = None,
    report: bool = True,
):
    """Run every (variant, cell, seed) of ``spec`` not finished yet; return the runs table.

    ``base_config`` defaults to the sweep file's ``base``; a variant's own ``config``
    replaces it for that variant. ``launcher``: ``inprocess`` (needs ``fit``, LightningCLI's
    entry point), ``subprocess``, ``submitit`` (options: the sweep file's ``launcher``
    mapping updated by ``launcher_options``) or a callable taking the run's config path.
    ``only`` restricts the sweep to some variants. Writes ``runs.csv`` and the report.
    """
    base_path = base_config or spec.base
    if base_path is None and any(v.config is None for v in spec.variants):
        raise SweepConfigError(f"sweep {spec.path}: no base config; pass --config or set 'base' in the sweep file")
    bases: dict[str, dict] = {}

    def base_for(name: str) -> dict:
        p = str(spec.variant(name).config or base_path)
        if p not in bases:
            bases[p] = load_base_config(p, spec.path, resolve=lambda path: resolved_config(path, fit))
        return bases[p]

    keys = list(spec.runs(only))
    for key in keys:  # fail before the first run if any base config is missing
        base_for(key.variant)
    out = Path(out_dir or default_out(spec))
    out.mkdir(parents=True, exist_ok=True)
    if spec.path:
        shutil.copyfile(spec.path, out / "sweep.yaml")
    options = merged_launcher_options(spec, launcher_options)
    runner = make_launcher(launcher, fit, options, folder=out / "submitit")
    jobs = [job for job in (_prepare(spec, key, out, base_for(key.variant)) for key in keys) if job is not None]
    write_runs_csv(spec, out, only)
    runner.launch(jobs)
    table = write_runs_csv(spec, out, only)
    if report:
        write_report(spec, out)
    import pandas as pd

    return pd.read_csv(table)


def _prepare(spec: SweepSpec, key: RunKey, out: Path, base: dict) -> Optional[RunJob]:
    run_dir = key.run_dir(out)
    name = f"{key.variant}{'/' + key.cell.name if key.cell.name else ''} seed {key.seed}"
    status = run_status(run_dir)
    if status == "done":
        print(f"[sweep] {name}: finished before, skipped", flush=True)
        return None
    if status == "submitted" and job_active(run_dir):
        print(f"[sweep] {name}: its cluster job is still queued or running, skipped", flush=True)
        return None
    if run_dir.exists():  # failed or interrupted: start again from scratch
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    config = variant_config(base, spec.variant(key.variant), key.seed, run_dir, spec.overrides, key.cell)
    config_path = run_dir / "sweep_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return RunJob(str(config_path), str(run_dir), name, spec.metric, spec.reduce, spec.mode)
