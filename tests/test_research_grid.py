"""A grid of dotted overrides crossed with the variants, and the report's "best over an axis"
selection (the GLUE learning-rate search), on the digits toy so it runs on a CPU."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from memel_lightning.cli import main
from memel_lightning.research.cli import sweep_main
from tests.tb_utils import read_events

REPO = Path(__file__).resolve().parents[1]
LRS = [0.0003, 0.03]


def test_lr_search_picks_the_best_lr_per_variant_and_compares_there(tmp_path):
    body = {
        "name": "lr_search",
        "base": str(REPO / "configs" / "toy_memel.yaml"),
        "metric": "val_acc",
        "mode": "max",
        "seeds": [0, 1],
        "callback_args": {"log_every_n_steps": 2, "hist_every_n_steps": 100},
        "memel": {"late_start": 2},
        "overrides": {
            "trainer.max_epochs": 1,
            "trainer.limit_train_batches": 8,
            "trainer.enable_progress_bar": False,
            "trainer.enable_checkpointing": False,
            "trainer.enable_model_summary": False,
            "trainer.num_sanity_val_steps": 0,
            "trainer.accelerator": "cpu",
            "model.init_args.hidden_sizes": [32, 32],
        },
        "variants": {"baseline": {"memel": {"strategy": "none"}}, "memel": {"memel": {"k": 4, "delta": 4.0}}},
        "grid": {"model.init_args.lr": LRS},
        "select": ["model.init_args.lr"],
    }
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(body))
    out = tmp_path / "out"
    sweep_main(["--sweep", str(sweep), "--out", str(out)], fit=main)

    acc = {}
    for variant in ("baseline", "memel"):
        for lr in LRS:
            runs = [out / variant / f"model.init_args.lr={lr}" / f"seed_{s}" for s in (0, 1)]
            for run in runs:
                assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lr"] == lr
            acc[variant, lr] = np.array([read_events(r).Scalars("val_acc")[-1].value for r in runs], dtype=np.float64)
    runs_csv = pd.read_csv(out / "runs.csv")
    assert len(runs_csv) == 8 and set(runs_csv["model.init_args.lr"]) == set(LRS)
    report = pd.read_csv(out / "report.csv").set_index("variant")
    best = {}
    for variant in ("baseline", "memel"):
        means = [acc[variant, lr].mean() for lr in LRS]
        best[variant] = LRS[int(np.argmax(means))]  # ties: the first lr in grid order
        assert report.loc[variant, "selected"] == f"model.init_args.lr={best[variant]}"
        np.testing.assert_allclose(report.loc[variant, ["seed_0", "seed_1"]].to_numpy(float), acc[variant, best[variant]],
                                   rtol=1e-6)
    a, b = acc["memel", best["memel"]], acc["baseline", best["baseline"]]
    assert report.loc["memel", "diff"] == pytest.approx((a - b).mean(), abs=1e-9)
    d = a - b
    if d.std() > 1e-12 * max(1.0, np.abs(d).max()):
        assert report.loc["memel", "p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-6)
    md = (out / "report.md").read_text()
    assert "Selection of `model.init_args.lr`" in md
    for variant in ("baseline", "memel"):
        for lr in LRS:
            assert f"{acc[variant, lr].mean():.4f}" in md
