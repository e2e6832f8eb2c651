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
