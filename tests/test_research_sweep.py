"""Sweeps end to end on the digits domain: runs, resume, the runs table and the report's
numbers against the runs' own logs (float64, scipy)."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from memel_lightning.cli import main
from memel_lightning.research.cli import sweep_main
from memel_lightning.research.compose import set_dotted, variant_config
from memel_lightning.research.runner import run_sweep
from memel_lightning.research.runs import DONE, FAILED
from memel_lightning.research.spec import SweepConfigError, load_sweep
from tests.tb_utils import read_events

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "base": str(REPO / "configs" / "toy_memel.yaml"),
    "metric": "val_acc",
    "mode": "max",
    "seeds": [0, 1],
    "callback_args": {"log_every_n_steps": 2, "hist_every_n_steps": 100},
    "memel": {"late_start": 2},
    "overrides": {
        "trainer.max_epochs": 2,
        "trainer.limit_train_batches": 6,
        "trainer.enable_progress_bar": False,
        "trainer.enable_checkpointing": False,
        "trainer.enable_model_summary": False,
        "trainer.num_sanity_val_steps": 0,
        "trainer.accelerator": "cpu",
        "model.init_args.hidden_sizes": [32, 32],
    },
    "variants": {"baseline": {"memel": {"strategy": "none"}}, "memel": {"memel": {"k": 2, "delta": 2.0}}},
}
TAPS = ("hidden.0", "hidden.1")


def write_sweep(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny sweep (2 variants x 2 seeds), in process, as ``python cli.py sweep`` runs it."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(tmp / "tiny.yaml", TINY)
    out = tmp / "out"
    sweep_main(["--sweep", str(sweep), "--out", str(out)], fit=main)
    return sweep, out


def logged(run_dir: Path, tag: str) -> np.ndarray:
    return np.array([e.value for e in read_events(run_dir).Scalars(tag)], dtype=np.float64)


def test_runs_have_own_folder_config_and_marker(finished):
    _, out = finished
    for variant in ("baseline", "memel"):
        for seed in (0, 1):
            run = out / variant / f"seed_{seed}"
            assert (run / DONE).is_file()
            resolved = yaml.safe_load((run / "config.yaml").read_text())
            assert resolved["seed_everything"] == seed
            (cb,) = [c for c in resolved["trainer"]["callbacks"] if c["class_path"].endswith("MEmeLCallback")]
            memel = cb["init_args"]["memel"]
            assert memel["late_start"] == 2
            if variant == "baseline":  # observed baseline: the callback stays, inhibition is off
                assert memel["strategy"] == "none"
            else:
                assert memel["k"] == 2 and memel["delta"] == 2.0
            assert "memel/mono_ratio" in read_events(run).Tags()["scalars"]
    for name in ("runs.csv", "report.md", "report.csv", "report.png"):
        assert (out / name).stat().st_size > 0


def test_runs_csv_holds_every_run_with_its_logged_numbers(finished):
    _, out = finished
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs[["variant", "seed"]].itertuples(index=False, name=None)) == [
        ("baseline", 0), ("baseline", 1), ("memel", 0), ("memel", 1)]
    assert (runs["status"] == "done").all() and (runs["metric"] == "val_acc").all()
    assert (runs["wall_s"] > 0).all()
    for _, r in runs.iterrows():
        run = Path(r["run_dir"])
        assert r["value"] == pytest.approx(logged(run, "val_acc")[-1], rel=1e-6)
        mono = logged(run, "memel/mono_ratio")
        assert r["mono_ratio_final"] == pytest.approx(mono[-1], rel=1e-6)
        assert r["mono_ratio_mean"] == pytest.approx(mono.mean(), rel=1e-6)
        for tap in TAPS:
            per_tap = logged(run, f"memel/{tap}/mono_ratio")
            assert r[f"mono_ratio_final/{tap}"] == pytest.approx(per_tap[-1], rel=1e-6)
            assert r[f"mono_ratio_mean/{tap}"] == pytest.approx(per_tap.mean(), rel=1e-6)


def _check_paired(row, prefix: str, a: np.ndarray, b: np.ndarray) -> None:
    d = a - b
    assert row[f"{prefix}diff"] == pytest.approx(d.mean(), abs=1e-9)
    if d.std() <= 1e-12 * max(1.0, np.abs(d).max()):  # no variation: the test is undefined
        assert math.isnan(row[f"{prefix}p"])
    else:
        assert row[f"{prefix}p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-6)


def test_report_numbers_equal_logged_values(finished):
    _, out = finished
    frame = pd.read_csv(out / "report.csv").set_index("variant")
    runs = {v: [out / v / f"seed_{s}" for s in (0, 1)] for v in ("baseline", "memel")}
    acc = {v: np.array([logged(r, "val_acc")[-1] for r in rs]) for v, rs in runs.items()}
    for v, values in acc.items():
        np.testing.assert_allclose(frame.loc[v, ["seed_0", "seed_1"]].to_numpy(float), values, rtol=1e-6)
        assert frame.loc[v, "mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert frame.loc[v, "std"] == pytest.approx(values.std(ddof=1), rel=1e-6, abs=1e-9)
    _check_paired(frame.loc["memel"], "", acc["memel"], acc["baseline"])
    # the baseline has a mono_ratio (observed baseline), and every variant its paired difference
    for tag, column in [("memel/mono_ratio", "mono_ratio")] + [(f"memel/{t}/mono_ratio", f"mono_ratio") for t in TAPS]:
        suffix = "" if tag == "memel/mono_ratio" else "/" + tag.split("/")[1]
        for what, reduce in (("final", lambda x: x[-1]), ("mean", np.mean)):
            col = f"{column}_{what}{suffix}"
            vals = {v: np.array([reduce(logged(r, tag)) for r in rs]) for v, rs in runs.items()}
            assert frame.loc["baseline", col] == pytest.approx(vals["baseline"].mean(), rel=1e-6)
            assert frame.loc["memel", col] == pytest.approx(vals["memel"].mean(), rel=1e-6)
            _check_paired(frame.loc["memel"], f"{col}_", vals["memel"], vals["baseline"])
    md = (out / "report.md").read_text()
    assert "Runs: 4 done (of 4)" in md
    assert f"{acc['memel'].mean():.4f}" in md and f"{frame.loc['baseline', 'mono_ratio_final']:.4f}" in md


def test_resume_skips_finished_runs_and_redoes_failed_and_interrupted(finished, tmp_path):
    sweep, out = finished
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    calls = []

    def launcher(config_path):
        calls.append(Path(config_path))
        main(["fit", "--config", str(config_path)])

    run_sweep(load_sweep(sweep), out_dir=out2, launcher=launcher)
    assert calls == []
    interrupted, failed = out2 / "memel" / "seed_1", out2 / "baseline" / "seed_0"
    (interrupted / DONE).unlink()
    (interrupted / "stale.txt").write_text("left by the interrupted run")
    (failed / DONE).unlink()
    (failed / FAILED).write_text(json.dumps({"error": "Traceback ...\nRuntimeError: boom"}))
    # a partial grid is reported: the two runs without a result show as failed / pending
    sweep_main(["--sweep", str(sweep), "--out", str(out2), "--report-only"])
    runs = pd.read_csv(out2 / "runs.csv")
    assert sorted(runs["status"]) == ["done", "done", "failed", "pending"]
    assert runs.loc[runs["status"] == "failed", "error"].item() == "RuntimeError: boom"
    report = pd.read_csv(out2 / "report.csv").set_index("variant")
    assert report.loc["memel", "n"] == 1 and report.loc["memel", "n_pairs"] == 0
    assert "Runs: 2 done, 1 failed, 1 pending (of 4)" in (out2 / "report.md").read_text()
    run_sweep(load_sweep(sweep), out_dir=out2, launcher=launcher)
    assert sorted(calls) == sorted([failed / "sweep_config.yaml", interrupted / "sweep_config.yaml"])
    assert not (interrupted / "stale.txt").exists() and not (failed / FAILED).exists()
    info = json.loads((interrupted / DONE).read_text())
    # seeded runs are reproducible: the redone run logs what the first one did
    assert info["value"] == pytest.approx(json.loads((out / "memel" / "seed_1" / DONE).read_text())["value"])


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    body = dict(TINY, seeds=[0], variants={"broken": {"overrides": {"model.init_args.hidden_sizes": "oops"}},
                                           "memel": {}})
    body["overrides"] = {**TINY["overrides"], "trainer.max_epochs": 1, "trainer.limit_train_batches": 2}
    table = sweep_main(["--sweep", str(write_sweep(tmp_path / "s.yaml", body)), "--out", str(tmp_path / "o")], fit=main)
    assert list(table["status"]) == ["failed", "done"]
    assert (tmp_path / "o" / "broken" / "seed_0" / FAILED).is_file()


def test_missing_base_config_is_a_clear_error(tmp_path):
    body = dict(TINY, base=str(tmp_path / "configs" / "bert_glue_memel.yaml"))
    sweep = write_sweep(tmp_path / "glue.yaml", body)
    with pytest.raises(SweepConfigError, match="bert_glue_memel.yaml does not exist"):
        run_sweep(load_sweep(sweep), out_dir=tmp_path / "out", launcher="subprocess")
    assert not (tmp_path / "out").exists()


def test_inprocess_needs_the_fit_entry_point(tmp_path):
    with pytest.raises(SweepConfigError, match="needs the fit entry point"):
        run_sweep(load_sweep(write_sweep(tmp_path / "s.yaml", TINY)), out_dir=tmp_path / "o", launcher="inprocess")


@pytest.mark.parametrize("name", ["digits", "digits_quick", "glue", "glue_paper", "swin", "nowcasting",
                                  "toy_polysemantic"])
def test_shipped_sweep_files_parse(name):
    spec = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
    baseline = spec.variant("baseline")
    assert spec.baseline == "baseline" and baseline.callback and baseline.memel["strategy"] == "none"
    assert spec.base is not None and all(v.config is None for v in spec.variants)  # one base config
    if name == "digits_quick":
        assert len([v for v in spec.variants if v.tune]) == 4
    elif name == "glue_paper":
        assert spec.axes == ["task", "model.init_args.lr"] and spec.select == ["model.init_args.lr"]
        assert len(spec.cells) == 8 * 4
        lrs = sorted({dict(c.overrides)["model.init_args.lr"] for c in spec.cells})
        assert lrs == [2e-5, 3e-5, 4e-5, 5e-5]
        rte = [c for c in spec.cells if c.label("task") == "rte"]
        assert all(dict(c.overrides)["data.init_args.task"] == "rte" for c in rte) and len(rte) == 4
    elif name != "toy_polysemantic":
        names = [v.name for v in spec.variants]
        assert {"naive_a", "naive_b", "memel"} <= set(names)
        cells = [v.tune for v in spec.variants if v.tune]
        assert sorted({c["k"] for c in cells}) == [1, 5, 10, 50, 100]
        assert sorted({c["delta"] for c in cells}) == [1, 5, 10, 50, 100]
        assert len(cells) == 25


def test_variant_config_edits(tmp_path):
    base = yaml.safe_load((REPO / "configs" / "toy_memel.yaml").read_text())
    body = dict(TINY, grid={"model.init_args.lr": [0.01, 0.1]})
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", body))
    cfg = variant_config(base, spec.variant("memel"), 3, tmp_path, spec.overrides, spec.cells[1])
    assert cfg["seed_everything"] == 3 and cfg["trainer"]["max_epochs"] == 2
    assert cfg["model"]["init_args"]["hidden_sizes"] == [32, 32] and cfg["model"]["init_args"]["lr"] == 0.1
    assert cfg["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path)
    assert base["trainer"]["callbacks"][0]["init_args"]["memel"]["k"] == 1  # base untouched
    with pytest.raises(SweepConfigError, match="not an index"):
        set_dotted(cfg, "trainer.callbacks.5.init_args", {})


def test_help_still_lists_lightning_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict", "sweep", "probe"):
        assert sub in text
