"""The labelled-FKR-vs-truth table reads the logged scalars and computes what it says."""
from __future__ import annotations

import numpy as np
import pytest

from memel_lightning.analysis.fkr_tracking import paired, summarize, table


def _write(run_dir, rows):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(run_dir))
    for step, (fkr, true, kc) in rows.items():
        w.add_scalar("memel/fkr", fkr, step)
        w.add_scalar("train_true_fkr", true, step)
        w.add_scalar("memel/kill_concentration", kc, step)
    w.add_scalar("memel/fkr", 0.5, 999)  # a step without the truth: not paired
    w.close()


def test_summary_against_numpy(tmp_path):
    rng = np.random.default_rng(0)
    runs = {}
    for seed in range(2):
        runs[seed] = {10 * (i + 1): tuple(rng.random(3)) for i in range(6)}
        _write(tmp_path / "v" / f"seed_{seed}", runs[seed])
    data = [np.array([runs[s][k] for k in sorted(runs[s])]) for s in range(2)]
    np.testing.assert_allclose(paired(tmp_path / "v" / "seed_0"), data[0], rtol=1e-6)
    s = summarize(tmp_path / "v")
    means = np.array([d.mean(0) for d in data])
    pooled = np.concatenate(data)
    assert s["runs"] == 2 and s["steps"] == 6
    assert s["fkr_mean"] == pytest.approx(means[:, 0].mean(), rel=1e-6)
    assert s["true_std"] == pytest.approx(means[:, 1].std(ddof=1), rel=1e-5)
    assert s["fkr_final"] == pytest.approx((data[0][-1, 0] + data[1][-1, 0]) / 2, rel=1e-6)
    assert s["corr"] == pytest.approx(np.corrcoef(pooled[:, 0], pooled[:, 1])[0, 1], rel=1e-5)
    assert "| `v` | 2 | 6 |" in table([tmp_path / "v"])


def test_no_paired_steps_is_an_error(tmp_path):
    (tmp_path / "empty" / "seed_0").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="logged"):
        summarize(tmp_path / "empty")


def test_ideal_network_floor_is_explained_by_the_labels():
    from memel_lightning.analysis.fkr_tracking import ideal_network_fkr

    top1 = ideal_network_fkr("top1", steps=60)
    thr = ideal_network_fkr("moving_threshold", steps=60)
    for r in (top1, thr):
        assert r["fkr"] == pytest.approx(r["no_feature"] + r["not_dominant"] + r["feature_absent"])
    # top-1 must kill in the 0.95^20 = 36 % of samples without any feature
    assert top1["no_feature"] == pytest.approx(0.95**20, abs=0.04)
    # the threshold kills only active features: false only when another feature is larger
    assert thr["no_feature"] == 0 and thr["feature_absent"] == 0 and 0.05 < thr["not_dominant"] < 0.3
