"""Run launchers: how the runs of a sweep are executed (this process, child processes, a cluster).

Every launcher executes :func:`execute_run` once per :class:`RunJob`: fit, then write
the run's ``done.json`` (its summary, :func:`~memel_lightning.research.runs.summarize_run`)
or ``failed.json`` (the traceback). The fit entry point is a callable taking LightningCLI's
argument list (``memel_lightning.cli.main``, handed in by the command line so this package
never imports it) or, without one, ``python -m memel_lightning.cli`` in a child process.

- :class:`InProcessLauncher`: one run after another in this process;
- :class:`SubprocessLauncher`: one child process per run;
- :class:`SubmititLauncher`: one cluster job per run (SLURM through ``submitit``; one job
  array by default), or submitit's local executor on this machine.

Example:
    >>> SubmititLauncher.from_options({"gpus_per_node": 4}, folder="/tmp/x").parameters["tasks_per_node"]
    4
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import yaml

from .runs import DONE, FAILED, JOB, summarize_run, write_atomic
from .spec import SweepConfigError

FitFn = Callable[[list], Any]  # LightningCLI's entry: fit(["fit", "--config", path])
LAUNCHERS = ("inprocess", "subprocess", "submitit")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunJob:
    """Everything one run needs, picklable (it travels to cluster jobs)."""

    config_path: str
    run_dir: str
    name: str  # "variant[/cell] seed s", for messages
    metric: str
    reduce: str
    mode: str
    fit: Optional[FitFn] = None


def _global_rank() -> int:
    # SLURM (and submitit on SLURM), submitit's local executor, torchrun: in that order.
    for var in ("SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def fit_subprocess(config_path: str) -> None:
    """``python -m memel_lightning.cli fit --config config_path`` in a child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-m", "memel_lightning.cli", "fit", "--config", config_path], check=True, env=env)


def fit_with(fit: FitFn, config_path: str) -> None:
    """``fit(["fit", "--config", config_path])`` in this process."""
    saved = sys.argv
    sys.argv = saved[:1]  # LightningCLI warns when it sees both args and a command line
    try:
        fit(["fit", "--config", config_path])
    except SystemExit as exc:  # LightningCLI exits on a bad config: a failed run, not the end of the sweep
        if exc.code not in (None, 0):
            raise RuntimeError(f"fit --config {config_path} exited with status {exc.code}") from exc
    finally:
        sys.argv = saved


def resolved_config(config_path: str, fit: Optional[FitFn] = None) -> dict:
    """The config LightningCLI builds from ``config_path`` (``fit --print_config``), as a mapping.

    In this process when ``fit`` is given, else in a child ``python -m memel_lightning.cli``.
    """
    args = ["fit", "--config", config_path, "--print_config"]
    if fit is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        done = subprocess.run([sys.executable, "-m", "memel_lightning.cli", *args], capture_output=True, text=True,
                              env=env)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise SweepConfigError(f"base config {config_path}: the CLI could not resolve it: {tail}")
        return yaml.safe_load(done.stdout)
    out = io.StringIO()
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        with contextlib.redirect_stdout(out):
            fit(args)
    except SystemExit as exc:  # --print_config exits after printing
        if exc.code not in (None, 0):
            raise SweepConfigError(f"base config {config_path}: the CLI could not resolve it (exit {exc.code})") from exc
    finally:
        sys.argv = saved
    return yaml.safe_load(out.getvalue())


def execute_run(job: RunJob) -> dict[str, Any]:
    """Fit one run and write its ``done.json`` (or ``failed.json`` and re-raise).

    Under DDP every rank calls this; only global rank 0 writes the run's files.
    """
    run_dir = Path(job.run_dir)
    start = time.perf_counter()
    try:
        if job.fit is None:
            fit_subprocess(job.config_path)
        else:
            fit_with(job.fit, job.config_path)
        info = summarize_run(run_dir, job.metric, job.reduce, job.mode) if _global_rank() == 0 else {}
    except Exception:
        if _global_rank() == 0:
            write_atomic(run_dir / FAILED, json.dumps(
                {"error": traceback.format_exc(), "wall_s": time.perf_counter() - start}, indent=1))
        raise
    if _global_rank() == 0:
        info["wall_s"] = time.perf_counter() - start
        write_atomic(run_dir / DONE, json.dumps(info, indent=1))
    return info


def _report_failure(job: RunJob, exc: BaseException) -> None:
    print(f"[sweep] {job.name} failed ({job.run_dir}/{FAILED}): {type(exc).__name__}: {exc}", flush=True)


class InProcessLauncher:
    """Runs one after another in this process (``fit`` is LightningCLI's entry point)."""

    def __init__(self, fit: FitFn) -> None:
        self.fit = fit

    def launch(self, jobs: Sequence[RunJob]) -> None:
        for job in jobs:
            job.fit = self.fit
            print(f"[sweep] {job.name}: running in {job.run_dir}", flush=True)
            try:
                execute_run(job)
            except Exception as exc:  # recorded in failed.json; the sweep goes on with the others
                _report_failure(job, exc)


class SubprocessLauncher:
    """Runs one after another, each in a child ``python -m memel_lightning.cli fit``."""

    def launch(self, jobs: Sequence[RunJob]) -> None:
        for job in jobs:
            job.fit = None
            print(f"[sweep] {job.name}: running in {job.run_dir} (child process)", flush=True)
            try:
                execute_run(job)
            except Exception as exc:
                _report_failure(job, exc)


class SubmititLauncher:
    """One cluster job per run through ``submitit`` (a job array unless ``array=False``).

    ``parameters`` are submitit's (``timeout_min``, ``nodes``, ``gpus_per_node``,
    ``tasks_per_node``, ``cpus_per_task``, ``mem_gb``, ``slurm_partition``,
    ``slurm_array_parallelism``, ``slurm_additional_parameters``, ...). With more than one
    GPU per node and no ``tasks_per_node``, one task per GPU is asked for: Lightning's DDP
    under SLURM uses the tasks SLURM started. ``cluster`` is ``slurm``, ``local`` (this
    machine, for tests) or ``None`` (submitit picks: SLURM when ``sbatch`` exists).
    ``wait=False`` returns after submitting; run the sweep again later to collect.
    """

    OWN_KEYS = ("name", "cluster", "array", "wait", "folder")

    def __init__(self, folder: str | Path, cluster: Optional[str] = None, parameters: Optional[Mapping[str, Any]] = None,
                 array: bool = True, wait: bool = True, fit: Optional[FitFn] = None) -> None:
        self.folder = Path(folder)
        self.cluster = cluster
        self.parameters = dict(parameters or {})
        self.array = bool(array)
        self.wait = bool(wait)
        self.fit = fit

    @classmethod
    def from_options(cls, options: Mapping[str, Any], folder: str | Path, fit: Optional[FitFn] = None) -> "SubmititLauncher":
        """From the sweep file's ``launcher`` mapping merged with the command line's options."""
        params = {k: v for k, v in options.items() if k not in cls.OWN_KEYS and v is not None}
        gpus = int(params.get("gpus_per_node", 0) or 0)
        if gpus > 1 and "tasks_per_node" not in params:
            params["tasks_per_node"] = gpus
        return cls(folder=options.get("folder") or folder, cluster=options.get("cluster"), parameters=params,
                   array=options.get("array", True), wait=options.get("wait", True), fit=fit)

    def executor(self):
        try:
            import submitit
        except ImportError as exc:  # the optional extra: pip install memel_lightning[cluster]
            raise SweepConfigError("--launcher submitit needs the submitit package: pip install 'memel_lightning[cluster]'") from exc
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        try:
            executor.update_parameters(**self.parameters)
        except (NameError, AssertionError, TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SweepConfigError(f"launcher parameters {sorted(self.parameters)} rejected by submitit: {first}") from exc
        return executor

    def sbatch_preview(self, n_runs: int) -> str:
        """The ``#SBATCH`` header SLURM would get for ``n_runs`` runs (no SLURM needed).

        Generic names are translated as submitit does on SLURM (``timeout_min -> time``,
        ``tasks_per_node -> ntasks_per_node``, ``mem_gb -> mem``), ``slurm_*`` lose the prefix.
        """
        from submitit.slurm import slurm

        params = {}
        for key, value in self.parameters.items():
            key = slurm.SlurmExecutor._equivalence_dict().get(key, key)
            if key.startswith(("local_", "debug_")):
                continue
            params[key[len("slurm_"):] if key.startswith("slurm_") else key] = value
        if "mem" in params:
            params["mem"] = f"{params['mem']}GB"
        text = slurm._make_sbatch_string(command="python -m submitit.core._submit", folder=self.folder / "%j",
                                         map_count=n_runs if self.array else None, **params)
        return "\n".join(line for line in text.splitlines() if line.startswith("#SBATCH"))

    def launch(self, jobs: Sequence[RunJob]) -> None:
        if not jobs:
            return
        executor = self.executor()
        for job in jobs:
            job.fit = self.fit
        if self.array:
            submitted = executor.map_array(execute_run, list(jobs))
        else:
            submitted = [executor.submit(execute_run, job) for job in jobs]
        for job, handle in zip(jobs, submitted):
            record = {"job_id": str(handle.job_id), "cluster": executor.cluster, "folder": str(self.folder)}
            write_atomic(Path(job.run_dir) / JOB, json.dumps(record))
            print(f"[sweep] {job.name}: submitted as job {handle.job_id} ({executor.cluster})", flush=True)
        if not self.wait:
            return
        for job, handle in zip(jobs, submitted):
            try:
                handle.result()
            except Exception as exc:
                if not (Path(job.run_dir) / FAILED).is_file():  # killed before it could write (timeout, node)
                    write_atomic(Path(job.run_dir) / FAILED, json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
                _report_failure(job, exc)


ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING"}


def job_active(run_dir: Path) -> bool:
    """Whether the SLURM job recorded in ``run_dir/job.json`` is still queued or running.

    Only SLURM jobs can be asked after the sweep that submitted them has exited; a
    local job that has not written ``done.json`` counts as gone.
    """
    path = Path(run_dir) / JOB
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    if record.get("cluster") != "slurm":
        return False
    import submitit

    state = submitit.SlurmJob(folder=Path(record["folder"]) / record["job_id"], job_id=record["job_id"]).state
    return state.upper() in ACTIVE_SLURM_STATES


def make_launcher(name: str | Callable, fit: Optional[FitFn], options: Mapping[str, Any], folder: Path):
    """The launcher named ``name`` (or a callable ``launcher(config_path)`` wrapped as one)."""
    if callable(name) and not isinstance(name, str):
        return InProcessLauncher(lambda args: name(Path(args[-1])))
    if name == "inprocess":
        if fit is None:
            raise SweepConfigError(
                "--launcher inprocess needs the fit entry point (run `python cli.py sweep`, which hands it over); "
                "use --launcher subprocess otherwise"
            )
        return InProcessLauncher(fit)
    if name == "subprocess":
        return SubprocessLauncher()
    if name == "submitit":
        return SubmititLauncher.from_options(options, folder=folder, fit=fit)
    raise SweepConfigError(f"launcher must be one of {LAUNCHERS} or a callable, got {name!r}")
