"""Checkpoint atomicity: what Lightning 2.6 guarantees and what AtomicCheckpointIO adds.

Lightning's ``TorchCheckpointIO.save_checkpoint`` calls ``_atomic_save``: the checkpoint
is serialised into memory, then written inside an fsspec transaction; for local paths
fsspec writes to ``tempfile.mkstemp()`` (in ``$TMPDIR``) and commits with
``shutil.move``. That is a rename, hence atomic, when ``$TMPDIR`` is on the checkpoint's
filesystem; across filesystems ``shutil.move`` copies into the final name, so an
interruption leaves a truncated checkpoint there. ``AtomicCheckpointIO`` writes the
temporary file beside the target and always renames.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from memel_lightning.callback import MEmeLCallback
from memel_lightning.checkpoint_io import AtomicCheckpointIO
from memel_lightning.cli import main
from memel_lightning.data.digits import DigitsDataModule
from memel_lightning.models.digits import DigitsClassifier


def fit(tmp_path, plugins=None, max_epochs: int = 1, ckpt_path=None):
    pl.seed_everything(0)
    cb = MEmeLCallback(memel={"late_start": 2})
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=1,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, plugins=plugins,
        callbacks=[cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)],
    )
    trainer.fit(DigitsClassifier(hidden_sizes=(8,)), DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
    return trainer, cb


class Crash(Exception):
    pass


def half_copy(src, dst, *args, **kwargs):
    """A copy interrupted half-way (the process killed during a cross-device move)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
    raise Crash("interrupted")


def cross_device_rename(*args, **kwargs):
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def test_lightning_default_save_is_atomic_only_on_one_filesystem(tmp_path, monkeypatch):
    trainer, _ = fit(tmp_path)
    last = tmp_path / "ckpt" / "last.ckpt"
    good = last.read_bytes()

    # same filesystem: an interrupted write leaves the previous checkpoint intact
    import fsspec.implementations.local as local

    def broken_write(self, data):
        self.f.write(data[: len(data) // 2])
        raise Crash("interrupted")

    with monkeypatch.context() as m:
        m.setattr(local.LocalFileOpener, "write", broken_write)
        with pytest.raises(Crash):
            trainer.save_checkpoint(last)
    assert last.read_bytes() == good

    # $TMPDIR on another filesystem: shutil.move copies into last.ckpt, and an
    # interruption leaves it truncated (simulated: rename fails with EXDEV, copy stops)
    with monkeypatch.context() as m:
        m.setattr(os, "rename", cross_device_rename)
        m.setattr(shutil, "copyfile", half_copy)  # what shutil.move's copy2 calls
        with pytest.raises(Crash):
            trainer.save_checkpoint(last)
    assert last.read_bytes() != good and len(last.read_bytes()) < len(good)
    with pytest.raises(Exception):
        torch.load(last, weights_only=False)


def test_atomic_checkpoint_io_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    trainer, cb = fit(tmp_path, plugins=[AtomicCheckpointIO()])
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 4 and any(k.startswith("MEmeLCallback") for k in state["callbacks"])
    good = last.read_bytes()

    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise Crash("interrupted")

    with monkeypatch.context() as m:
        m.setattr(os, "rename", cross_device_rename)  # never used: the rename is in-directory
        m.setattr(shutil, "copyfile", half_copy)  # what shutil.move's copy2 calls
        m.setattr(torch, "save", interrupted_save)
        with pytest.raises(Crash):
            trainer.save_checkpoint(last)
    assert last.read_bytes() == good
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]

    # and it resumes like any checkpoint
    resumed, cb2 = fit(tmp_path, plugins=[AtomicCheckpointIO()], max_epochs=2, ckpt_path=str(last))
    assert resumed.global_step == 8 and cb2.memel_for("hidden.0").step == 8


def test_atomic_checkpoint_io_from_yaml(tmp_path):
    cli = main(run=False, args=[
        "--config", str(Path(__file__).resolve().parents[1] / "configs" / "toy_memel.yaml"),
        "--trainer.plugins+=memel_lightning.checkpoint_io.AtomicCheckpointIO",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
