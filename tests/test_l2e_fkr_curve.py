"""Offline FKR-vs-ratio curve (L2E Fig. 6) against a direct float64 computation of Eq. 3-4."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from memel_lightning.analysis.fkr_curve import RATIOS, fkr_curve, write_fkr_curve

C = 3


def _data(own_label: bool, seed: int = 0, batches: int = 30, b: int = 4, length: int = 10, f: int = 9):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        lab = torch.randint(0, C, (b, length), generator=g)
        lab[:, 0] = -1  # unlabelled positions (e.g. document separators)
        z = torch.randn(b, length, f, generator=g, dtype=torch.float64) * 0.3
        spike = torch.rand(b, length, f, generator=g) < 0.2
        if own_label:
            spike &= lab[..., None] == (torch.arange(f) % C)
        out.append((torch.where(spike, z + 5.0, z), lab))
    return out


def _reference(data, ratios, eps):
    """Eq. 3-4 written out in float64 numpy, exact quantiles."""
    x = np.concatenate([z.reshape(-1, z.shape[-1]).numpy() for z, _ in data])
    lab = np.concatenate([l.reshape(-1).numpy() for _, l in data])
    x, lab = x[lab >= 0], lab[lab >= 0]
    mean, var = x.mean(0), x.var(0, ddof=1)
    phi = (x - mean) ** 2 / (var + eps * var.mean())
    l_star = np.array([np.argmax([phi[lab == c, j].mean() for c in range(C)]) for j in range(x.shape[1])])
    out = []
    for r in ratios:
        tau = np.quantile(phi, 1 - r)
        kill = phi >= tau
        false = kill & (lab[:, None] != l_star[None, :])
        out.append((tau, kill.sum(), false.sum()))
    return out


@pytest.mark.parametrize("own_label", [True, False])
def test_curve_matches_a_float64_reference(own_label, tmp_path):
    data = _data(own_label)
    model = nn.Sequential(nn.Identity())
    rows = fkr_curve(model, data, ["0"], inputs=lambda b: b[0], labels=lambda b: b[1], reduce_dims=(0,))
    ref = _reference(data, RATIOS, 0.01)
    layer = [r for r in rows if r.tap == "0"]
    assert [r.ratio for r in layer] == list(RATIOS)
    for r, (tau, kills, false) in zip(layer, ref):
        assert r.tau == pytest.approx(tau, rel=1e-5)
        assert (r.kills, r.false_kills) == (kills, false)
        assert r.fkr == pytest.approx(false / kills)
    if own_label:  # the extremes come from the neuron's own label: no false kill at small ratios
        assert all(r.fkr == 0 for r in layer if r.ratio <= 0.03)
    else:  # l* is fitted on the same data, so FKR sits a little under 1 - 1/C (0.64 here)
        assert layer[2].fkr == pytest.approx(1 - 1 / C, abs=0.1)
    paths = write_fkr_curve(rows, tmp_path)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 * len(RATIOS) and table[0]["tap"] == "0"
    assert paths["png"].stat().st_size > 1000


def test_bad_ratios_and_labels_raise():
    data = _data(True)
    model = nn.Sequential(nn.Identity())
    with pytest.raises(ValueError, match="ratios must be in"):
        fkr_curve(model, data, ["0"], inputs=lambda b: b[0], labels=lambda b: b[1], ratios=(2.0,))
    with pytest.raises(ValueError, match="do not match the leading axes"):
        fkr_curve(model, data, ["0"], inputs=lambda b: b[0], labels=lambda b: b[1][:, :3])
