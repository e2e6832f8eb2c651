"""Checkpoint resume: a run stopped and resumed from its checkpoint ends with the same
weights and MEmeL statistics, bit for bit on CPU, as an uninterrupted run."""
from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from memel_lightning.callback import MEmeLCallback
from memel_lightning.data.digits import DigitsDataModule
from memel_lightning.models.digits import DigitsClassifier

TAPS = ("hidden.0", "hidden.1")
LIMIT = 8  # training batches per epoch (of 44): keeps the test short


def run(root: Path, memel: dict, ckpt_path: str | None = None, **trainer_kw):
    pl.seed_everything(0)
    model = DigitsClassifier(hidden_sizes=(24, 16), lr=3e-3)
    cb = MEmeLCallback(taps="default", memel=memel, log_every_n_steps=5)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0, **trainer_kw.pop("ckpt_kw", {}))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=LIMIT, limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=root,
        callbacks=[cb, ckpt], deterministic=True, **trainer_kw,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return model, cb, trainer


def statistics(cb: MEmeLCallback) -> dict[str, torch.Tensor]:
    out = {}
    for tap in TAPS:
        memel = cb.memel_for(tap)
        for key, value in memel.state_dict().items():
            out[f"{tap}/{key}"] = value
        out[f"{tap}/step"] = torch.tensor(memel.step)
    return out


def assert_identical(a, b) -> None:
    (model_a, cb_a), (model_b, cb_b) = a, b
    for (name, pa), (_, pb) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(pa, pb), name
    sa, sb = statistics(cb_a), statistics(cb_b)
    assert sorted(sa) == sorted(sb)
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key
    assert cb_a._train_batches == cb_b._train_batches


MEMEL = {"selector": "topk", "k": 2, "strategy": "reverse", "late_start": 5, "forget_steps": 4}


def test_resume_at_epoch_boundary_is_bit_exact(tmp_path):
    full_model, full_cb, full = run(tmp_path / "full", MEMEL, max_epochs=4)
    assert full.global_step == 4 * LIMIT

    first_model, first_cb, first = run(tmp_path / "split", MEMEL, max_epochs=2)
    last = tmp_path / "split" / "ckpt" / "last.ckpt"
    assert first.global_step == 2 * LIMIT and last.is_file()
    # the statistics of every tap are in the checkpoint
    saved = torch.load(last, weights_only=False)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("MEmeLCallback")]
    assert set(state["taps"]) == set(TAPS) and state["train_batches"] == 2 * LIMIT
    assert torch.equal(state["taps"]["hidden.0"]["moments.mean"], first_cb.memel_for("hidden.0").moments.mean)

    resumed = run(tmp_path / "split", MEMEL, ckpt_path=str(last), max_epochs=4)
    assert resumed[2].global_step == 4 * LIMIT
    assert_identical((full_model, full_cb), resumed[:2])
    # ... and the interrupted run really differed at the checkpoint (the test can fail)
    assert not torch.equal(first_cb.memel_for("hidden.0").moments.mean, full_cb.memel_for("hidden.0").moments.mean)


def test_resume_moving_threshold_is_bit_exact(tmp_path):
    memel = {"selector": "moving_threshold", "target_ratio": 0.05, "late_start": 3, "forget_steps": 4}
    full = run(tmp_path / "full", memel, max_epochs=2)
    run(tmp_path / "split", memel, max_epochs=1)
    resumed = run(tmp_path / "split", memel, ckpt_path=str(tmp_path / "split" / "ckpt" / "last.ckpt"), max_epochs=2)
    assert_identical(full[:2], resumed[:2])
    tau_full = full[1].memel_for("hidden.1").selector.tau
    assert torch.equal(tau_full, resumed[1].memel_for("hidden.1").selector.tau) and torch.isfinite(tau_full)


def test_resume_mid_epoch_is_bit_exact(tmp_path):
    """Mid-epoch resume (stopped by ``max_steps``) is exact thanks to a resumable loader.

    Lightning 2.6 restores its loop counters from a mid-epoch checkpoint, but a plain
    DataLoader restarts the epoch from its first batch: Lightning then warns "You're
    resuming from a checkpoint that ended before the epoch ended and your dataloader is
    not resumable" and trains on the epoch's first batches again instead of the
    remaining ones (the weights differ from an uninterrupted run). It asks the loader
    for ``state_dict()`` when saving and calls ``load_state_dict()`` on resume (only if
    every train loader has both). DigitsDataModule's train loader is a
    ``ResumableDataLoader``, which skips the batches it already served: a resume after
    5 of 8 batches is bit-exact.
    """
    full_model, full_cb, _ = run(tmp_path / "full", MEMEL, max_epochs=2)
    kw = dict(ckpt_kw=dict(every_n_train_steps=5))
    first = run(tmp_path / "split", MEMEL, max_steps=5, max_epochs=2, **kw)
    assert first[2].global_step == 5 and first[1]._train_batches == 5
    last = tmp_path / "split" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"served": 5}]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        resumed = run(tmp_path / "split", MEMEL, ckpt_path=str(last), max_epochs=2, **kw)
    assert resumed[2].global_step == 2 * LIMIT
    assert_identical((full_model, full_cb), resumed[:2])


def test_resumable_loader_discards_served_batches_with_any_sampler():
    from memel_lightning.data.samplers import ResumableDataLoader

    loader = ResumableDataLoader(list(range(9)), batch_size=2, shuffle=False)
    full = [b.tolist() for b in loader]
    assert loader.state_dict() == {"served": 5}
    loader.load_state_dict({"served": 2})
    assert [b.tolist() for b in loader] == full[2:] and loader.state_dict() == {"served": 5}
    assert [b.tolist() for b in loader] == full  # the next epoch starts from the beginning


def test_resume_with_a_checkpoint_of_other_settings_or_an_old_key_is_refused(tmp_path):
    """Lightning finds a callback's state by its key and would silently skip a missing
    one (fresh statistics): the callback refuses instead, naming both keys."""
    run(tmp_path / "split", MEMEL, max_epochs=1)
    last = tmp_path / "split" / "ckpt" / "last.ckpt"
    with pytest.raises(ValueError, match=r"holds MEmeLCallback statistics under .*other taps or memel settings"):
        run(tmp_path / "split", dict(MEMEL, k=1), ckpt_path=str(last), max_epochs=2)
    # a checkpoint of the previous version: its key listed only the settings given
    ckpt = torch.load(last, weights_only=False)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("MEmeLCallback")]
    old_key = "MEmeLCallback{'memel': \"" + str(sorted(MEMEL.items())) + "\", 'taps': \"'default'\"}"
    ckpt["callbacks"] = {old_key: ckpt["callbacks"][key]}
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="older version"):
        run(tmp_path / "split", MEMEL, ckpt_path=str(tmp_path / "old.ckpt"), max_epochs=2)
