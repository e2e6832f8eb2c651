"""``--launcher submitit`` with submitit's local executor: two variants x two seeds to a report;
a second sweep skips what finished and resubmits what failed."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from memel_lightning.cli import main
from memel_lightning.research.cli import sweep_main
from memel_lightning.research.launch import SubmititLauncher
from memel_lightning.research.runs import DONE, FAILED, JOB
from memel_lightning.research.spec import SweepConfigError

pytest.importorskip("submitit")
REPO = Path(__file__).resolve().parents[1]

BODY = {
    "name": "cluster",
    "base": str(REPO / "configs" / "toy_memel.yaml"),
    "metric": "val_acc",
    "seeds": [0, 1],
    "callback_args": {"log_every_n_steps": 2, "hist_every_n_steps": 100},
    "memel": {"late_start": 2},
    "overrides": {
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 6,
        "trainer.enable_progress_bar": False,
        "trainer.enable_checkpointing": False,
        "trainer.enable_model_summary": False,
        "trainer.num_sanity_val_steps": 0,
        "trainer.accelerator": "cpu",
        "model.init_args.hidden_sizes": [32, 32],
    },
    "variants": {"baseline": {"memel": {"strategy": "none"}}, "memel": {"memel": {"k": 2, "delta": 2.0}}},
    "launcher": {"name": "submitit", "cluster": "local", "timeout_min": 10, "slurm_partition": "gpu"},
}


@pytest.mark.parametrize("cluster", [
    "debug",  # submitit's in-process executor: the submission and resume logic, fast
    pytest.param("local", marks=pytest.mark.slow),  # one child process per job (2.5-4 min on 2 busy cores)
])
def test_submitit_runs_the_grid_and_resumes(tmp_path, capsys, cluster):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({**BODY, "launcher": {**BODY["launcher"], "cluster": cluster}}))
    out = tmp_path / "out"
    argv = ["--sweep", str(sweep), "--out", str(out)]
    table = sweep_main(argv, fit=main)  # the launcher comes from the sweep file
    assert list(table["status"]) == ["done"] * 4
    for _, r in table.iterrows():
        run = Path(r["run_dir"])
        job = json.loads((run / JOB).read_text())
        assert job["cluster"] == cluster and (run / DONE).is_file() and (run / "config.yaml").is_file()
        assert r["wall_s"] > 0 and r["mono_ratio_final"] == r["mono_ratio_final"]  # not NaN: observed baseline too
    report = pd.read_csv(out / "report.csv").set_index("variant")
    assert report.loc["baseline", "n"] == 2 and report.loc["memel", "n_pairs"] == 2
    first = {p: p.stat().st_mtime_ns for p in out.rglob(DONE)}

    # a second sweep: nothing finished is run again; a failed run is resubmitted
    failed = out / "memel" / "seed_1"
    (failed / DONE).unlink()
    (failed / FAILED).write_text(json.dumps({"error": "RuntimeError: node lost"}))
    capsys.readouterr()
    table = sweep_main(argv + ["--launcher", "submitit", "--cluster", cluster], fit=main)
    printed = capsys.readouterr().out
    assert printed.count("finished before, skipped") == 3
    assert "memel seed 1: submitted as job" in printed
    assert list(table["status"]) == ["done"] * 4
    for path, mtime in first.items():
        if path.parent != failed:
            assert path.stat().st_mtime_ns == mtime
    assert not (failed / FAILED).exists()


def test_cluster_options_reach_the_sbatch_header(tmp_path):
    launcher = SubmititLauncher.from_options(
        {"name": "submitit", "gpus_per_node": 8, "nodes": 2, "timeout_min": 600, "slurm_partition": "gpu",
         "slurm_array_parallelism": 16, "mem_gb": 64, "cluster": "slurm"}, folder=tmp_path)
    # one task per GPU: Lightning's DDP under SLURM uses the tasks SLURM starts
    assert launcher.parameters["tasks_per_node"] == 8 and launcher.array and launcher.cluster == "slurm"
    header = launcher.sbatch_preview(75).splitlines()
    for line in ["--array=0-74%16", "--gpus-per-node=8", "--nodes=2", "--ntasks-per-node=8", "--partition=gpu",
                 "--time=600", "--mem=64GB"]:
        assert f"#SBATCH {line}" in header
    one_by_one = SubmititLauncher.from_options({"array": False, "timeout_min": 5}, folder=tmp_path)
    assert not any("--array" in line for line in one_by_one.sbatch_preview(3).splitlines())


def test_cli_options_override_the_sweep_file(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(BODY))
    sweep_main(["--sweep", str(sweep), "--out", str(tmp_path / "o"), "--gpus", "4", "--time", "30",
                "--partition", "a100", "--no-array", "--dry-run"], fit=main)
    printed = capsys.readouterr().out
    assert "4 run(s) to launch (0 finished)" in printed
    for line in ["--gpus-per-node=4", "--ntasks-per-node=4", "--time=30", "--partition=a100", "--job-name=cluster"]:
        assert f"#SBATCH {line}" in printed
    assert "--array" not in printed and not (tmp_path / "o").exists()


def test_bad_launcher_parameters_are_one_line_errors(tmp_path):
    bad = SubmititLauncher.from_options({"gpu_per_node": 1, "cluster": "local"}, folder=tmp_path)
    with pytest.raises(SweepConfigError, match="rejected by submitit"):
        bad.executor()
