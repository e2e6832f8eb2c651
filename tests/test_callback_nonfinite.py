"""A batch with NaN activations: statistics untouched and counted (``nonfinite="skip"``),
a warning at the callback's next logging step, or an error naming the tap ("raise")."""
from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memel_lightning.callback import MEmeLCallback
from memel_lightning.inhibition import NonFiniteStatisticsError

NAN_BATCH = 2


class NanAt(pl.LightningModule):
    """Puts a NaN into the tapped activations of one batch; that step is skipped by
    returning None (so the weights stay finite and later batches are normal)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.head = nn.Linear(6, 2)
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}
        self.cb: MEmeLCallback | None = None

    def snapshot(self, key: str) -> None:
        mom = self.cb.memel_for("enc").moments
        self.snapshots[key] = {k: v.clone() for k, v in mom.state_dict().items()}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx == NAN_BATCH:
            x = x.clone()
            x[1, 2] = float("nan")
            self.snapshot("before")
            self.head(self.enc(x))
            self.snapshot("after")
            return None
        return F.cross_entropy(self.head(self.enc(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, nonfinite: str, max_steps: int = 8) -> tuple[NanAt, MEmeLCallback]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(80, 4, generator=g), torch.randint(0, 2, (80,), generator=g))
    model = NanAt()
    cb = MEmeLCallback(taps=["enc"], memel={"late_start": 1, "nonfinite": nonfinite}, log_every_n_steps=2)
    model.cb = cb
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[cb],
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    return model, cb


def test_nan_batch_is_skipped_counted_and_warned_once(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, cb = fit(tmp_path, "skip")
    before, after = model.snapshots["before"], model.snapshots["after"]
    for key in ("mean", "var", "count", "steps"):
        assert torch.equal(before[key], after[key]), key
    assert int(before["skipped"]) == 0 and int(after["skipped"]) == 1
    mom = cb.memel_for("enc").moments
    assert int(mom.skipped) == 1
    assert torch.isfinite(mom.mean).all() and torch.isfinite(mom.var).all()
    assert (mom.steps == 7).all()  # 8 batches, one skipped
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "NaN/inf" in str(w.message)]
    # logging steps are Lightning's, (optimizer steps before the batch + 1) % 2 == 0: batches
    # 1, 4 (the skipped batch 2 makes no optimizer step), 6, ...: the NaN is reported at batch 4 only
    assert len(ours) == 1
    assert "tap 'enc'" in str(ours[0].message) and "1 batch(es)" in str(ours[0].message)

    # stopped right after the NaN batch: no logging step followed, so no warning yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, "skip", max_steps=NAN_BATCH + 1)
    assert not [w for w in caught if "NaN/inf" in str(w.message)]


def test_nan_batch_raises_with_the_tap_name(tmp_path):
    with pytest.raises(NonFiniteStatisticsError, match="tap 'enc'"):
        fit(tmp_path, "raise")
