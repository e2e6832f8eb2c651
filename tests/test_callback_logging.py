"""MEmeLCallback's TensorBoard output: the first run's tags, and logged values equal to a
direct float64 recomputation from the raw tap outputs (docs/method.md §3, §4, §6)."""
from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from memel_lightning.callback import MEmeLCallback
from memel_lightning.cli import main
from memel_lightning.data.digits import DigitsDataModule
from memel_lightning.models.digits import DigitsClassifier
from tb_utils import read_events

REPO = Path(__file__).resolve().parents[1]
METRICS = ("selected_frac", "mono_ratio", "phi_mean", "phi_max", "kill_concentration")


def test_first_run_writes_memel_tags(tmp_path):
    """``python cli.py fit --config configs/toy_memel.yaml`` for one epoch, in-process."""
    main(args=[
        "fit", "--config", str(REPO / "configs" / "toy_memel.yaml"),
        "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
    ])
    events = read_events(tmp_path)
    tags = set(events.Tags()["scalars"])
    for tap in ("hidden.0", "hidden.1"):
        for metric in METRICS:
            assert f"memel/{tap}/{metric}" in tags
        assert f"memel/{tap}/log10_phi" in events.Tags()["histograms"]
    assert {"memel/mono_ratio", "memel/kill_concentration", "train_loss", "val_loss", "val_acc"} <= tags
    # the labelled FKR: DigitsClassifier.memel_labels gives each image's digit (tests/test_l2e_memel_fkr.py)
    assert {"memel/fkr", "memel/hidden.0/fkr"} <= tags

    # 1437 training images / batch 32 = 44 steps (0-43), logged on Lightning's steps
    # (every 5 batches: 4, 9, ..., 39, as train_loss) and at the last batch
    frac = {e.step: e.value for e in events.Scalars("memel/hidden.0/selected_frac")}
    assert sorted(frac) == list(range(4, 44, 5)) + [43]
    assert [e.step for e in events.Scalars("train_loss")] == list(range(4, 44, 5))
    for step, value in frac.items():
        # late_start=10: batches 0-9 only feed the statistics; from batch 10 top-1 of
        # 128 neurons selects one value per sample: 1/128 (no ties)
        expected = 0.0 if step < 10 else 1.0 / 128
        assert value == pytest.approx(expected, abs=1e-7), step
    phi_max = [e.value for e in events.Scalars("memel/hidden.1/phi_max")]
    phi_mean = [e.value for e in events.Scalars("memel/hidden.1/phi_mean")]
    assert all(mx >= mn >= 0 for mx, mn in zip(phi_max, phi_mean))
    # log10(phi) at the first inhibited batch and the last one (hist_every_n_steps=50)
    hist = events.Histograms("memel/hidden.0/log10_phi")
    assert [h.step for h in hist] == [10, 43] and hist[0].histogram_value.num == 32 * 128


class Recompute(pl.Callback):
    """After MEmeLCallback logged a step, recompute its metrics in float64 from the raw
    tap outputs (recorded by a hook registered before the callback's) and the
    statistics the step scored with (score_with='updated': those after the merge)."""

    def __init__(self, memel_cb: MEmeLCallback, raw: dict, tau_report: float, max_share: float, eps: float):
        self.memel_cb, self.raw, self.tau, self.share, self.eps = memel_cb, raw, tau_report, max_share, eps
        self.expected: dict[int, dict[str, float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not (self.memel_cb._record or self.memel_cb._final_batch or self.memel_cb._histogram):
            return
        totals = [0.0, 0.0, 0.0, 0.0]  # mono neurons, neurons, false kills, kills
        out = {}
        for tap in self.memel_cb.tap_names:
            memel = self.memel_cb.memel_for(tap)
            z = self.raw[tap][-1].double()
            mu, v = memel.moments.mean.double(), memel.moments.var.double()
            phi = (z - mu) ** 2 / (v + self.eps * v.mean())
            n, f = phi.shape
            if memel.step > memel.late_start:
                selected = phi == phi.amax(1, keepdim=True)  # top-1 per sample
            else:
                selected = torch.zeros_like(phi, dtype=torch.bool)
            per_neuron = selected.sum(0).double()
            kills = per_neuron.sum().item()
            false_kills = (per_neuron * (per_neuron > self.share * n)).sum().item()
            mono = (phi.amax(0) > self.tau).sum().item()
            out.update({
                f"memel/{tap}/selected_frac": kills / (n * f),
                f"memel/{tap}/mono_ratio": mono / f,
                f"memel/{tap}/phi_mean": phi.mean().item(),
                f"memel/{tap}/phi_max": phi.max().item(),
                f"memel/{tap}/kill_concentration": false_kills / max(kills, 1.0),
                f"memel/{tap}/phi_sum": phi.sum().item(),
                f"memel/{tap}/phi_min": phi.min().item(),
            })
            for i, value in enumerate((mono, f, false_kills, kills)):
                totals[i] += value
        out["memel/mono_ratio"] = totals[0] / totals[1]
        out["memel/kill_concentration"] = totals[2] / max(totals[3], 1.0)
        # the step Lightning logs this batch at (before its increment, after this hook)
        self.expected[trainer.fit_loop.epoch_loop._batches_that_stepped] = out


def test_logged_values_equal_direct_recomputation(tmp_path):
    pl.seed_everything(0)
    model = DigitsClassifier(hidden_sizes=(16, 12), lr=1e-2)
    taps = ["hidden.0", "hidden.1"]
    raw: dict = {tap: [] for tap in taps}
    for tap in taps:
        model.get_submodule(tap).register_forward_hook(
            lambda m, a, out, tap=tap: raw[tap].append(out.detach().clone()) if m.training else None
        )
    opts = dict(late_start=3, k=1, tau_report=4.0, max_share=0.1, eps=0.01)
    cb = MEmeLCallback(taps=taps, memel=opts, log_every_n_steps=2, hist_every_n_steps=4)
    rec = Recompute(cb, raw, tau_report=4.0, max_share=0.1, eps=0.01)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=9, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="tb"), callbacks=[cb, rec],
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    events = read_events(tmp_path)
    # recorded: Lightning's logging steps (s + 1) % 2 == 0, histograms at (s + 1) % 4 == 0,
    # the first inhibited batch (late_start=3) and the last batch (max_steps=9: batch 8)
    assert sorted(rec.expected) == [1, 3, 5, 7, 8]
    checked_concentration = False
    # (the labelled FKR, logged from the late start on, is checked in tests/test_l2e_memel_fkr.py)
    for tag in [t for t in events.Tags()["scalars"] if t.startswith("memel/") and not t.endswith("fkr")]:
        logged = {e.step: e.value for e in events.Scalars(tag)}
        assert sorted(logged) == [1, 3, 5, 7, 8], tag
        for step, value in logged.items():
            assert value == pytest.approx(rec.expected[step][tag], rel=1e-4, abs=1e-6), (tag, step)
            checked_concentration |= tag.endswith("kill_concentration") and value > 0
    assert checked_concentration  # the recomputation covered a non-trivial kill concentration
    # the last logged scalars are in trainer.callback_metrics (ModelCheckpoint, EarlyStopping)
    last = max(rec.expected)
    for tag in ("memel/mono_ratio", "memel/hidden.0/phi_mean"):
        assert float(trainer.callback_metrics[tag]) == pytest.approx(rec.expected[last][tag], rel=1e-4)
    assert any(rec.expected[s]["memel/mono_ratio"] not in (0.0, 1.0) for s in rec.expected)
    # the progress bar shows the overall mono_ratio (no labels here: no fkr), not the per-tap ones
    assert float(trainer.progress_bar_metrics["memel/mono_ratio"]) == pytest.approx(rec.expected[last]["memel/mono_ratio"])
    assert not any(k.startswith("memel/hidden") for k in trainer.progress_bar_metrics)
    for tap in taps:
        hist = events.Histograms(f"memel/{tap}/log10_phi")
        assert [h.step for h in hist] == [3, 7, 8]
        for h in hist:
            exp = rec.expected[h.step]
            assert h.histogram_value.num == 32 * model.get_submodule(tap)[0].out_features
            assert h.histogram_value.max == pytest.approx(math.log10(exp[f"memel/{tap}/phi_max"]), abs=1e-4)
            low = math.log10(max(exp[f"memel/{tap}/phi_min"], 1e-6))  # floored at 1e-6
            assert h.histogram_value.min == pytest.approx(low, abs=1e-4)
