"""``python cli.py sweep --sweep configs/sweeps/<x>.yaml [...]``: run a sweep and write its report.

``sweep_main(argv, fit=...)`` is called by ``memel_lightning.cli`` with its own entry point
as ``fit`` (so this package never imports the CLI module); without ``fit`` the default
launcher is ``subprocess``.

Example:
    >>> build_parser().parse_args(["--sweep", "s.yaml", "--launcher", "submitit", "--gpus", "8"]).gpus_per_node
    8
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from .launch import LAUNCHERS, FitFn, SubmititLauncher
from .report import write_report
from .runner import default_out, merged_launcher_options, run_sweep
from .runs import run_status, write_runs_csv
from .spec import load_sweep, parse_overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cli.py sweep",
        description="Run a comparison / MEmeL-Tune sweep; write runs.csv and report.{md,csv,png}.",
    )
    parser.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/<domain>.yaml)")
    parser.add_argument("--config", default=None, help="base config; default: the sweep file's 'base'")
    parser.add_argument("--out", default=None, help="output folder; default runs/sweeps/<sweep name>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run, dotted key, e.g. trainer.max_epochs=1 (repeatable)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="replace the sweep file's seeds")
    parser.add_argument("--launcher", choices=LAUNCHERS, default=None,
                        help="default: the sweep file's launcher.name, else inprocess (python cli.py sweep)")
    parser.add_argument("--report-only", action="store_true", help="only (re)write runs.csv and the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="print how many runs are left (and the #SBATCH header for submitit); run nothing")
    cluster = parser.add_argument_group("submitit launcher (override the sweep file's 'launcher' mapping)")
    cluster.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                         help="submitit executor (debug: in this process); default: SLURM when srun exists, else local")
    cluster.add_argument("--gpus", type=int, default=None, dest="gpus_per_node", help="GPUs per node of each run")
    cluster.add_argument("--nodes", type=int, default=None, help="nodes per run")
    cluster.add_argument("--tasks-per-node", type=int, default=None, dest="tasks_per_node",
                         help="default: one per GPU (Lightning DDP under SLURM)")
    cluster.add_argument("--cpus-per-task", type=int, default=None, dest="cpus_per_task")
    cluster.add_argument("--mem-gb", type=int, default=None, dest="mem_gb")
    cluster.add_argument("--time", type=int, default=None, dest="timeout_min", help="time limit per run, minutes")
    cluster.add_argument("--partition", default=None, dest="slurm_partition")
    cluster.add_argument("--array-parallelism", type=int, default=None, dest="slurm_array_parallelism",
                         help="at most this many array jobs at once")
    cluster.add_argument("--no-array", action="store_false", dest="array", default=None,
                         help="one sbatch per run instead of one job array")
    cluster.add_argument("--no-wait", action="store_false", dest="wait", default=None,
                         help="return after submitting; run the same command again to collect and report")
    return parser


CLUSTER_OPTIONS = ("cluster", "gpus_per_node", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                   "slurm_partition", "slurm_array_parallelism", "array", "wait")


def sweep_main(argv: Optional[Sequence[str]] = None, fit: Optional[FitFn] = None):
    """Parse ``argv``, run the sweep (or only report), print ``report.md``; return the runs table."""
    args = build_parser().parse_args(argv)
    spec = load_sweep(args.sweep, parse_overrides(args.set))
    if args.seeds:
        spec.seeds = list(args.seeds)
    out = Path(args.out or default_out(spec))
    if args.report_only:
        write_runs_csv(spec, out, args.only)
        paths = write_report(spec, out)
        print(paths["md"].read_text())
        return None
    launcher = args.launcher or spec.launcher.get("name") or ("inprocess" if fit is not None else "subprocess")
    options = {k: getattr(args, k) for k in CLUSTER_OPTIONS}
    if args.dry_run:
        return _dry_run(spec, out, launcher, options, args.only)
    table = run_sweep(spec, base_config=args.config, out_dir=out, launcher=launcher, fit=fit, only=args.only,
                      launcher_options=options)
    print((out / "report.md").read_text())
    failed = table[table["status"] == "failed"]
    if len(failed):
        print(f"[sweep] {len(failed)} run(s) failed (see runs.csv, column error); run the same command again "
              "to start them again", flush=True)
    return table


def _dry_run(spec, out: Path, launcher: str, options: dict, only) -> None:
    keys = list(spec.runs(only))
    left = [k for k in keys if run_status(k.run_dir(out)) != "done"]
    print(f"[sweep] {spec.name}: {len(left)} run(s) to launch ({len(keys) - len(left)} finished) "
          f"with launcher {launcher}, into {out}")
    if launcher == "submitit":
        merged = merged_launcher_options(spec, options)
        print(SubmititLauncher.from_options(merged, folder=out / "submitit").sbatch_preview(len(left)))
