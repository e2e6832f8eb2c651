"""Selection over grid axes, paired tests and the report of a partial grid, on hand-made run tables."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from memel_lightning.research.report import write_report
from memel_lightning.research.spec import SweepConfigError, load_sweep
from memel_lightning.research.stats import paired_test, select_best, summarize


def test_paired_test_against_a_direct_float64_computation():
    a = np.array([0.91, 0.88, 0.95, 0.90], dtype=np.float64)
    b = np.array([0.89, 0.88, 0.91, 0.87], dtype=np.float64)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    p = 2 * sps.t.sf(abs(t), df=d.size - 1)
    r = paired_test(a, b)
    assert r.n == 4 and r.diff == pytest.approx(d.mean(), abs=1e-15)
    assert r.t == pytest.approx(t, rel=1e-12) and r.p == pytest.approx(p, rel=1e-10)
    # pairs with a missing value are left out; constant differences have no t-test
    r = paired_test([0.5, math.nan, 0.7], [0.4, 0.3, 0.6])
    assert r.n == 2 and r.diff == pytest.approx(0.1) and math.isnan(r.p) and math.isnan(r.t)
    assert paired_test([], []).n == 0
    with pytest.raises(ValueError, match="equally long"):
        paired_test([1.0], [1.0, 2.0])


SWEEP = {
    "name": "synthetic",
    "base": "unused.yaml",
    "metric": "val_loss",
    "mode": "min",
    "seeds": [0, 1, 2],
    "variants": {"baseline": {"memel": {"strategy": "none"}}, "memel": {}},
    "grid": {"task": {"a": {"data.init_args.task": "a"}, "b": {"data.init_args.task": "b"}},
             "model.init_args.lr": [0.1, 0.2]},
    "select": ["model.init_args.lr"],
}
# val_loss per (variant, task, lr) and seed; lower is better. memel/b: both lrs tie -> 0.1 (grid order).
VALUES = {
    ("baseline", "a", 0.1): [1.0, 1.2, 1.1], ("baseline", "a", 0.2): [0.9, 1.0, 1.0],
    ("baseline", "b", 0.1): [2.0, 2.1, 2.2], ("baseline", "b", 0.2): [2.5, 2.4, 2.6],
    ("memel", "a", 0.1): [0.8, 0.9, 0.85], ("memel", "a", 0.2): [1.5, 1.4, 1.3],
    ("memel", "b", 0.1): [2.0, 2.0, 2.0], ("memel", "b", 0.2): [2.0, 2.0, 2.0],
}


def synthetic_runs(tmp_path: Path):
    spec = load_sweep(_write(tmp_path / "s.yaml", SWEEP))
    rows = []
    for (variant, task, lr), values in VALUES.items():
        for seed, value in enumerate(values):
            run_dir = tmp_path / variant / task / str(lr) / f"seed_{seed}"
            run_dir.mkdir(parents=True)
            mono = 0.05 + 0.01 * seed + (0.02 if variant == "baseline" else 0.0)
            (run_dir / "done.json").write_text(json.dumps({"value": value, "curves": {"all": [[0, mono], [10, mono]]}}))
            status = "pending" if (variant, task, lr, seed) == ("memel", "a", 0.2, 2) else "done"
            rows.append({"variant": variant, "cell": f"task={task},model.init_args.lr={lr}", "task": task,
                         "model.init_args.lr": str(lr), "seed": seed, "status": status, "metric": "val_loss",
                         "value": value if status == "done" else math.nan, "mono_ratio_final": mono,
                         "mono_ratio_mean": mono, "run_dir": str(run_dir)})
    return spec, pd.DataFrame(rows)


def _write(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_select_best_per_variant_and_group(tmp_path):
    spec, runs = synthetic_runs(tmp_path)
    chosen = select_best(runs, spec)
    picked = {(r.variant, r.group): r.selected for r in chosen.itertuples()}
    assert picked == {
        ("baseline", "task=a"): "model.init_args.lr=0.2", ("baseline", "task=b"): "model.init_args.lr=0.1",
        ("memel", "task=a"): "model.init_args.lr=0.1", ("memel", "task=b"): "model.init_args.lr=0.1",
    }
    table = summarize(chosen, spec).set_index(["group", "variant"])
    a = np.array(VALUES["memel", "a", 0.1]); b = np.array(VALUES["baseline", "a", 0.2])
    row = table.loc[("task=a", "memel")]
    assert row["mean"] == pytest.approx(a.mean()) and row["std"] == pytest.approx(a.std(ddof=1))
    assert row["diff"] == pytest.approx((a - b).mean()) and row["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    # the mean over seeds ranks the settings; a pending run does not count
    assert len(chosen[(chosen.variant == "memel") & (chosen.group == "task=a")]) == 3


def test_report_of_a_partial_grid_with_groups(tmp_path):
    spec, runs = synthetic_runs(tmp_path)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    paths = write_report(spec, tmp_path)
    md = paths["md"].read_text()
    assert "Runs: 23 done, 1 pending (of 24)" in md
    assert "## task=a" in md and "## task=b" in md
    assert "Selection of `model.init_args.lr`" in md
    # memel's mono_ratio is 0.02 below the baseline's at every seed: constant differences, no p
    report = pd.read_csv(paths["csv"])
    mem = report[(report.variant == "memel")]
    assert np.allclose(mem["mono_ratio_final_diff"], -0.02) and mem["mono_ratio_final_p"].isna().all()
    assert paths["png"].stat().st_size > 0


@pytest.mark.parametrize("change, message", [
    ({"select": ["model.init_args.wd"]}, "not grid axes"),
    ({"grid": {"model.init_args.lr": []}}, "non-empty list"),
    ({"grid": {"task": {"a": 3}}}, "must map dotted keys"),
    ({"mode": "up"}, "mode must be"),
    ({"launcher": [1]}, "launcher must be a mapping"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(SweepConfigError, match=message):
        load_sweep(_write(tmp_path / "s.yaml", {**SWEEP, **change}))
