"""Sweep end to end on the digits domain: runs, resume, and report numbers against the runs' logs."""
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
from memel_lightning.sweep import (
    DONE,
    SweepConfigError,
    fit_in_process,
    load_sweep,
    run_sweep,
    set_dotted,
    variant_config,
)
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
    "variants": {"baseline": {"callback": False}, "memel": {"memel": {"k": 2, "delta": 2.0}}},
}


def write_sweep(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny sweep (2 variants x 2 seeds), run through ``cli.py sweep``."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(tmp / "tiny.yaml", TINY)
    out = tmp / "out"
    main(["sweep", "--sweep", str(sweep), "--out", str(out)])
    return sweep, out


def last_logged(run_dir: Path, tag: str) -> float:
    return read_events(run_dir).Scalars(tag)[-1].value


def test_sweep_runs_have_own_folder_config_and_marker(finished):
    _, out = finished
    for variant in ("baseline", "memel"):
        for seed in (0, 1):
            run = out / variant / f"seed_{seed}"
            assert (run / DONE).is_file()
            assert (run / "sweep_config.yaml").is_file() and (run / "config.yaml").is_file()
            resolved = yaml.safe_load((run / "config.yaml").read_text())
            assert resolved["seed_everything"] == seed
            callbacks = [c["class_path"] for c in resolved["trainer"].get("callbacks") or []]
            if variant == "baseline":
                assert not any(c.endswith("MEmeLCallback") for c in callbacks)
                assert not any(t.startswith("memel/") for t in read_events(run).Tags()["scalars"])
            else:
                (cb,) = [c for c in resolved["trainer"]["callbacks"] if c["class_path"].endswith("MEmeLCallback")]
                assert cb["init_args"]["memel"]["k"] == 2 and cb["init_args"]["memel"]["delta"] == 2.0
                assert cb["init_args"]["memel"]["late_start"] == 2
                assert "memel/mono_ratio" in read_events(run).Tags()["scalars"]
    for name in ("report.md", "report.csv", "report.png"):
        assert (out / name).stat().st_size > 0


def test_report_numbers_equal_logged_values(finished):
    _, out = finished
    frame = pd.read_csv(out / "report.csv").set_index("variant")
    logged = {v: np.array([last_logged(out / v / f"seed_{s}", "val_acc") for s in (0, 1)], dtype=np.float64)
              for v in ("baseline", "memel")}
    for v, values in logged.items():
        np.testing.assert_allclose(frame.loc[v, ["seed_0", "seed_1"]].to_numpy(float), values, rtol=1e-6)
        assert frame.loc[v, "mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert frame.loc[v, "std"] == pytest.approx(values.std(ddof=1), rel=1e-6, abs=1e-9)
    diff = logged["memel"] - logged["baseline"]
    assert frame.loc["memel", "diff_vs_baseline"] == pytest.approx(diff.mean(), abs=1e-9)
    ref = stats.ttest_rel(logged["memel"], logged["baseline"])
    if np.isnan(ref.pvalue):
        assert math.isnan(frame.loc["memel", "p"])
    else:
        assert frame.loc["memel", "p"] == pytest.approx(ref.pvalue, rel=1e-6)
        assert frame.loc["memel", "t"] == pytest.approx(ref.statistic, rel=1e-6)
    mono = np.mean([last_logged(out / "memel" / f"seed_{s}", "memel/mono_ratio") for s in (0, 1)])
    assert frame.loc["memel", "mono_ratio_last"] == pytest.approx(mono, rel=1e-6)
    md = (out / "report.md").read_text()
    assert f"{logged['memel'].mean():.4f}" in md and f"{logged['baseline'][0]:.4f}" in md


def test_resume_skips_finished_runs_and_redoes_interrupted(finished, tmp_path):
    sweep, out = finished
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    calls = []

    def launcher(config_path):
        calls.append(Path(config_path))
        fit_in_process(config_path)

    run_sweep(load_sweep(sweep), out_dir=out2, launcher=launcher)
    assert calls == []
    # An interrupted run: no marker, leftover files. Only it runs again, from scratch.
    run = out2 / "memel" / "seed_1"
    (run / DONE).unlink()
    (run / "stale.txt").write_text("left by the interrupted run")
    run_sweep(load_sweep(sweep), out_dir=out2, launcher=launcher)
    assert calls == [run / "sweep_config.yaml"]
    assert (run / DONE).is_file() and not (run / "stale.txt").exists()
    info = json.loads((run / DONE).read_text())
    assert info["value"] == pytest.approx(last_logged(run, "val_acc"))
    # seeded runs are reproducible: the redone run logs what the first one did
    assert info["value"] == pytest.approx(json.loads((out / "memel" / "seed_1" / DONE).read_text())["value"])


def test_missing_base_config_is_a_clear_error(tmp_path):
    body = dict(TINY, base=str(tmp_path / "configs" / "bert_glue_memel.yaml"))
    sweep = write_sweep(tmp_path / "glue.yaml", body)
    with pytest.raises(SweepConfigError, match="bert_glue_memel.yaml does not exist"):
        run_sweep(load_sweep(sweep), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["digits", "digits_quick", "glue", "swin", "nowcasting", "toy_polysemantic"])
def test_shipped_sweep_files_parse(name):
    spec = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
    assert spec.baseline == "baseline" and spec.variant("baseline").callback is False
    assert spec.base is not None
    if name == "digits_quick":
        assert len([v for v in spec.variants if v.tune]) == 4
    elif name != "toy_polysemantic":
        names = [v.name for v in spec.variants]
        assert {"naive_a", "naive_b", "memel"} <= set(names)
        cells = [v.tune for v in spec.variants if v.tune]
        assert sorted({c["k"] for c in cells}) == [1, 5, 10, 50, 100]
        assert sorted({c["delta"] for c in cells}) == [1, 5, 10, 50, 100]
        assert len(cells) == 25


def test_variant_config_edits(tmp_path):
    base = yaml.safe_load((REPO / "configs" / "toy_memel.yaml").read_text())
    spec = load_sweep(write_sweep(tmp_path / "s.yaml", TINY))
    cfg = variant_config(base, spec.variant("memel"), 3, tmp_path, spec.overrides)
    assert cfg["seed_everything"] == 3 and cfg["trainer"]["max_epochs"] == 2
    assert cfg["model"]["init_args"]["hidden_sizes"] == [32, 32]
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
