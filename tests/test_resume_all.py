"""Mid-epoch resume is exact for every LightningModule the package ships.

Each case trains 2 epochs of 6 batches with a checkpoint every 4 steps, once without
interruption and once killed after step 7 (an exception in ``on_train_batch_end``, before the
step-8 checkpoint could be written) then resumed from the step-4 checkpoint, which is in the
middle of the first epoch. The weights and the MEmeL callback's whole state (statistics,
counters, selector state) must be bit-identical at the end, on CPU.

Before the fix ``ImageClassifier``/``GlueClassifier`` called
``trainer.estimated_stepping_batches`` in ``configure_optimizers``: it builds the train loader
before Lightning restores the loop state, so the loader's position was never restored and
the resumed run re-read the epoch's first batches. Dropout, drop-path and mixup also need
the random state (:class:`~memel_lightning.resume.RNGStateCheckpoint`).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from memel_lightning.callback import MEmeLCallback
from memel_lightning.resume import RNGStateCheckpoint

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHES, EPOCHS, EVERY, KILL_AFTER = 6, 2, 4, 7


def memel_options(**options: Any) -> Any:
    """The callback's ``memel`` argument: a MEmeLConfig when the core has one, else a dict."""
    try:
        from memel_lightning.inhibition import MEmeLConfig
    except ImportError:
        return dict(options)
    return MEmeLConfig(**options)


# ---------------------------------------------------------------------- the shipped modules
def quickstart(tmp: Path):
    from memel_lightning.data import DigitsDataModule
    from memel_lightning.models import ImageClassifier

    model = ImageClassifier(  # the quickstart recipe (drop-path, warm-up + cosine), narrower
        num_classes=10, lr=2e-3, warmup_lr=1e-5, min_lr=1e-5, weight_decay=0.05, warmup_epochs=1,
        model_kwargs=dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 1, 1), img_size=16, patch_size=2,
                          window_size=4, in_chans=1, drop_path_rate=0.1),
    )
    return model, DigitsDataModule(batch_size=16, image_size=16), memel_options(k=2, late_start=2, forget_steps=3)


def glue(tmp: Path):
    from memel_lightning.data import GlueDataModule
    from memel_lightning.models import GlueClassifier
    from tests.glue_fixtures import TINY_BERT, make_tokenizer, write_task

    write_task("rte", tmp / "RTE", n=24)
    tok = make_tokenizer(tmp / "tok")
    cfg = dict(TINY_BERT, num_hidden_layers=2, vocab_size=200, hidden_dropout_prob=0.1)  # dropout on
    model = GlueClassifier(config=cfg, lr=1e-3, warmup_ratio=0.2)
    data = GlueDataModule("RTE", data_dir=str(tmp / "RTE"), tokenizer=tok, batch_size=4)
    return model, data, memel_options(k=2, late_start=2, forget_steps=3, variable_shape=True)


def causal_lm(tmp: Path):
    from memel_lightning.data.text import TextDataModule
    from memel_lightning.models import CausalLM

    rnd = random.Random(0)
    words = "the cat sat on a mat while dogs ran to the park and back again".split()
    with open(tmp / "docs.jsonl", "w") as f:
        for _ in range(60):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(rnd.randint(10, 60)))}) + "\n")
    data = TextDataModule(files=str(tmp / "docs.jsonl"), vocab_size=300, seq_len=16, batch_size=4,
                          val_fraction=0.1, cache_dir=str(tmp / "cache"))
    model = CausalLM("tiny", config_overrides={"vocab_size": 384, "hidden_dropout": 0.1}, warmup_ratio=0.2)
    return model, data, memel_options(selector="moving_threshold", strategy="regularize", reduce_dims=(0,),
                                      late_start=2)


def digits(tmp: Path):
    from memel_lightning.data import DigitsDataModule
    from memel_lightning.models import DigitsClassifier

    return DigitsClassifier(hidden_sizes=(24, 16)), DigitsDataModule(batch_size=16), memel_options(k=2, late_start=2)


def toy(tmp: Path):
    from memel_lightning.data import PolysemanticDataModule
    from memel_lightning.models import PolysemanticToy

    data = PolysemanticDataModule(train_size=512, val_size=64, batch_size=32)
    return PolysemanticToy(), data, memel_options(k=2, late_start=2)


def nowcaster(tmp: Path):
    from memel_lightning.data import HKO7DataModule
    from memel_lightning.models import Nowcaster

    model = Nowcaster(in_frames=3, out_frames=3, lr=1e-3, log_images=False,
                      arch_kwargs=dict(conv_channels=[4, 8, 8], hidden_channels=[4, 8, 8],
                                       conv_kernels=[5, 3, 3], conv_strides=[3, 2, 2]))
    data = HKO7DataModule(root=str(tmp / "hko"), in_frames=3, out_frames=3, frame_size=24, raw_size=96,
                          batch_size=2, eval_stride=5,
                          synthetic={"days": [2, 1, 1], "frames_per_day": 40, "size": 96, "seed": 0})
    return model, data, memel_options(k=1, late_start=2)


CASES: dict[str, Callable] = {
    "quickstart": quickstart, "glue": glue, "causal_lm": causal_lm,
    "digits": digits, "toy": toy, "nowcaster": nowcaster,
}
SLOW: set[str] = set()  # all cases together take ~15 s on one thread


class Kill(pl.Callback):
    """Stands for SIGKILL: the run dies after ``step`` steps, before any later checkpoint."""

    class Killed(RuntimeError):
        pass

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise Kill.Killed(f"killed after step {trainer.global_step}")


def run(case: str, root: Path, data_root: Path, ckpt_path: str | None = None, kill: int | None = None):
    pl.seed_everything(0)
    model, data, options = CASES[case](data_root)
    cb = MEmeLCallback(taps="default", memel=options)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", filename="{step}", every_n_train_steps=EVERY, save_top_k=-1)
    callbacks = [cb, RNGStateCheckpoint(), ckpt] + ([Kill(kill)] if kill else [])
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        max_epochs=EPOCHS, limit_train_batches=BATCHES, limit_val_batches=1, num_sanity_val_steps=0,
        default_root_dir=root, callbacks=callbacks, deterministic=True,
    )
    try:
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    except Kill.Killed:
        pass
    return model, cb, trainer


def flatten(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for key, value in state.items():
            out.update(flatten(value, f"{prefix}{key}/"))
        return out
    if isinstance(state, (list, tuple)):
        out = {}
        for i, value in enumerate(state):
            out.update(flatten(value, f"{prefix}{i}/"))
        return out
    return {prefix.rstrip("/"): state}


def assert_same(a: Any, b: Any, what: str) -> None:
    fa, fb = flatten(a), flatten(b)
    assert sorted(fa) == sorted(fb), what
    for key in fa:
        x, y = fa[key], fb[key]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{what}: {key}"
        else:
            assert x == y, f"{what}: {key}"


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_mid_epoch_resume_is_bit_exact(case: str, tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    data_root.mkdir()
    full_model, full_cb, full = run(case, tmp_path / "full", data_root)
    assert full.global_step == EPOCHS * BATCHES

    _, _, killed = run(case, tmp_path / "split", data_root, kill=KILL_AFTER)
    assert killed.global_step == KILL_AFTER
    ckpt = tmp_path / "split" / "ckpt" / f"step={EVERY}.ckpt"
    assert ckpt.is_file() and not (tmp_path / "split" / "ckpt" / f"step={2 * EVERY}.ckpt").exists()
    saved = torch.load(ckpt, weights_only=False)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"served": EVERY}], "loader not resumable"

    model, cb, resumed = run(case, tmp_path / "split", data_root, ckpt_path=str(ckpt))
    assert resumed.global_step == EPOCHS * BATCHES
    assert_same(full_model.state_dict(), model.state_dict(), f"{case} weights")
    assert_same(full_cb.state_dict(), cb.state_dict(), f"{case} MEmeL state")
    for g_full, g_res in zip(full.optimizers[0].param_groups, resumed.optimizers[0].param_groups):
        assert g_full["lr"] == g_res["lr"]


def test_rng_state_is_restored_at_the_first_training_batch() -> None:
    import numpy as np

    cb = RNGStateCheckpoint()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = cb.state_dict()
    want = (torch.rand(3), np.random.rand(2), random.random())
    torch.manual_seed(4), np.random.seed(4), random.seed(4)
    cb.load_state_dict(torch.load(_roundtrip(state), weights_only=True))  # as Lightning loads it
    torch.rand(5)  # e.g. the train loader's iterator drawing its base seed: undone below
    cb.on_train_batch_start(None, None, None, 0)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
    cb.on_train_batch_start(None, None, None, 1)  # only once
    assert not torch.equal(torch.rand(3), want[0])


def _roundtrip(state: dict) -> Any:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf
