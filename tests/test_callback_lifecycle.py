"""MEmeLCallback schedules the core's step and logs through Lightning: a recurrent tap
(called T times per batch) reports all its calls and its late start counts batches;
the scalars reach trainer.callback_metrics (ModelCheckpoint); the typed MEmeLConfig
accepts the flat YAML dicts and --print_config writes every setting."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from memel_lightning.callback import MEmeLCallback
from memel_lightning.cli import main
from memel_lightning.data.digits import DigitsDataModule
from memel_lightning.inhibition import MEmeLConfig, MEmeLConfigError
from memel_lightning.models.digits import DigitsClassifier
from reference import ReferenceMoments, reference_topk

REPO = Path(__file__).resolve().parents[1]
T, B, H = 3, 8, 5  # time steps per batch, batch, hidden


class Recurrent(pl.LightningModule):
    """``cell`` is called T times per batch; a forward hook records its raw outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(H, H)
        self.head = nn.Linear(H, 1)
        self.raw: list[Tensor] = []
        self.inhibited: list[bool] = []

    def memel_taps(self) -> list[str]:
        return ["cell"]

    def training_step(self, batch, batch_idx):
        (x,) = batch
        h = x
        changed = []
        for _ in range(T):
            pre = torch.tanh(h)  # the cell's input
            raw = nn.functional.linear(pre, self.cell.weight, self.cell.bias)
            h = self.cell(pre)
            self.raw.append(raw.detach().clone())
            changed.append(bool((h != raw).any()))
        self.inhibited.append(any(changed))
        return self.head(h).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: the raw outputs stay reproducible


def recurrent_loader(batches: int = 14) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(batches * B, H, generator=g)), batch_size=B)


def test_recurrent_tap_late_start_counts_batches_and_metrics_cover_all_calls(tmp_path):
    model = Recurrent()
    cb = MEmeLCallback(taps="default", memel={"late_start": 10, "k": 1, "forget_steps": 4, "tau_report": 2.0},
                       log_every_n_steps=1, sync_stats=False)

    class Check(pl.Callback):  # after MEmeLCallback: compare the logged values with float64
        def __init__(self):
            self.ref, self.checked = ReferenceMoments(H, forget_steps=4), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            calls = pl_module.raw[-T:]
            phis = []
            for z in calls:
                self.ref.update(z.numpy())
                phis.append(self.ref.phi(z.numpy()))
            phi = np.concatenate(phis)
            sel = reference_topk(phi, 1) if batch_idx >= 10 else np.zeros_like(phi, dtype=bool)
            logged = trainer.callback_metrics
            assert float(logged["memel/cell/selected_frac"]) == pytest.approx(sel.mean(), abs=1e-7)
            assert float(logged["memel/cell/phi_mean"]) == pytest.approx(phi.mean(), rel=1e-4)
            assert float(logged["memel/cell/phi_max"]) == pytest.approx(phi.max(), rel=1e-4)
            assert float(logged["memel/mono_ratio"]) == pytest.approx((phi.max(0) > 2.0).mean(), abs=1e-7)
            self.checked += 1

    check = Check()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[cb, check])
    trainer.fit(model, recurrent_loader(14))
    assert check.checked == 14
    # late_start: 10 -> the 11th training batch is the first inhibited (T calls each)
    assert model.inhibited.index(True) == 10 and all(model.inhibited[10:])
    assert cb.memel_for("cell").step == 14 and int(cb.memel_for("cell").moments.steps[0]) == 14 * T


def test_model_checkpoint_monitors_memel_mono_ratio(tmp_path):
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="memel/mono_ratio", mode="max", save_top_k=1)
    cb = MEmeLCallback(taps="default", memel={"late_start": 2})

    class EpochEnd(pl.Callback):  # the value ModelCheckpoint sees at every epoch end
        values: list = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.values.append(float(trainer.callback_metrics["memel/mono_ratio"]))

    seen = EpochEnd()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_train_batches=6, limit_val_batches=0,
                         log_every_n_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[cb, seen, ckpt])
    trainer.fit(DigitsClassifier(hidden_sizes=(16,)), DigitsDataModule(batch_size=16))
    assert cb.log_every_n_steps == 2  # the trainer's cadence by default
    assert ckpt.best_model_path and Path(ckpt.best_model_path).exists()
    assert "memel/mono_ratio" in trainer.callback_metrics
    assert len(seen.values) == 3 and float(ckpt.best_model_score) == max(seen.values)
    saved = torch.load(ckpt.best_model_path, weights_only=False)
    assert any(k.startswith("MEmeLCallback") for k in saved["callbacks"])


def test_flat_yaml_dict_becomes_a_typed_config_and_print_config_shows_every_setting(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(args=["fit", "--config", str(REPO / "configs" / "toy_memel.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    [memel_cb] = [c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("MEmeLCallback")]
    memel = memel_cb["init_args"]["memel"]
    expected = MEmeLConfig().as_dict()
    assert set(memel) == set(expected)  # eps, score_with, tau_report, the selector's parameters...
    assert memel["k"] == 1 and memel["delta"] == 1.0 and memel["eps"] == 0.01 and memel["threshold_lr"] == 0.1

    assert MEmeLConfig(**memel) == MEmeLConfig(k=1, delta=1.0, forget_steps=10, late_start=10)

    # a single setting from the command line, the others kept from the YAML dict
    with pytest.raises(SystemExit):
        main(args=["fit", "--config", str(REPO / "configs" / "toy_memel.yaml"),
                   "--trainer.callbacks.init_args.memel.threshold_lr=0.5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    [memel_cb] = [c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("MEmeLCallback")]
    assert memel_cb["init_args"]["memel"]["threshold_lr"] == 0.5 and memel_cb["init_args"]["memel"]["k"] == 1


def test_callback_refuses_bad_settings_at_construction():
    with pytest.raises(MEmeLConfigError, match="memel.eps must be in"):
        MEmeLCallback(memel={"eps": 0})
    with pytest.raises(MEmeLConfigError, match="unknown memel setting"):
        MEmeLCallback(memel={"epsilon": 0.1})
