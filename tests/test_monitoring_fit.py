"""After a short quickstart fit, TensorBoard has what a researcher looks at (issue:
monitoring): the Custom Scalars layout, the mono_ratio heatmap, log10(phi) histograms
and HParams with the MEmeL settings and final metrics, read back from the event file."""
from __future__ import annotations

from pathlib import Path

import pytest

from memel_lightning.cli import main
from tb_views import accumulator, hparams, images, layout

REPO = Path(__file__).resolve().parents[1]
TAPS = ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]  # model.layers.2.blocks.{0..3}, shortened


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """``python cli.py fit --config configs/quickstart.yaml``, cut to 12 training and 2
    validation batches of 16 images (late_start=10: batches 10 and 11 are inhibited)."""
    out = tmp_path_factory.mktemp("quickstart")
    cli = main(args=[
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=12", "--trainer.limit_val_batches=2",
        "--data.init_args.batch_size=16",
        f"--trainer.logger.init_args.save_dir={out}", f"--trainer.default_root_dir={out}",
        "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--trainer.enable_checkpointing=false",
    ])
    events = accumulator(out)
    events.progress_bar = {k: float(v) for k, v in cli.trainer.progress_bar_metrics.items()}
    return events


def test_custom_scalars_chart_every_tap_per_metric(quickstart_run):
    lay = layout(quickstart_run)
    memel = lay["MEmeL"]
    # fkr: ImageClassifier gives labels (memel_labels); no reg_loss without the regulariser
    assert list(memel) == ["mono_ratio", "selected_frac", "fkr", "kill_concentration", "phi_max", "phi_mean"]
    escaped = [t.replace(".", "\\.") for t in TAPS]
    assert memel["mono_ratio"] == [f"^memel/{t}/mono_ratio$" for t in escaped] + ["^memel/mono_ratio$"]
    scalars = set(quickstart_run.Tags()["scalars"])
    for chart in memel.values():  # every line of every chart is a logged tag
        for regex in chart:
            assert regex[1:-1].replace("\\", "") in scalars, regex
    task = lay["task (validation)"]
    assert task["acc"] == ["^val_acc$"] and task["loss"] == ["^val_loss$", "^train_loss$"]


def test_scalars_on_the_trainers_steps(quickstart_run):
    train = [e.step for e in quickstart_run.Scalars("train_loss")]
    mono = [e.step for e in quickstart_run.Scalars("memel/mono_ratio")]
    assert train == [4, 9]  # log_every_n_steps: 5
    assert mono == [4, 9, 11]  # the same steps, and the last batch (the run's final values)
    frac = {e.step: e.value for e in quickstart_run.Scalars("memel/blocks.0/selected_frac")}
    assert frac[4] == 0.0 and frac[9] == 0.0 and frac[11] > 0.0  # inhibition from batch 10


def test_progress_bar_shows_overall_mono_ratio_and_fkr(quickstart_run):
    bar = quickstart_run.progress_bar
    last = {tag: quickstart_run.Scalars(tag)[-1].value for tag in ("memel/mono_ratio", "memel/fkr")}
    assert bar["memel/mono_ratio"] == pytest.approx(last["memel/mono_ratio"], rel=1e-6)
    assert bar["memel/fkr"] == pytest.approx(last["memel/fkr"], rel=1e-6)  # labelled (class labels)
    assert not any(k.startswith("memel/blocks") for k in bar)  # per-tap values stay off the bar


def test_heatmap_image(quickstart_run):
    shots = images(quickstart_run, "memel/heatmap/mono_ratio")
    assert [step for step, _ in shots] == [4, 11]  # the first recorded step, then the end of fit
    img = shots[-1][1]
    assert img.shape[0] > 150 and img.shape[1] > 600
    # the cells use the viridis map: many pixels far from grey/white
    rgb = img.reshape(-1, 3).astype(int)
    coloured = (rgb.max(1) - rgb.min(1)) > 60
    assert coloured.mean() > 0.2


def test_phi_histograms_at_start_of_inhibition_and_end(quickstart_run):
    assert [s for s, _ in images(quickstart_run, "memel/phi_histogram")] == [10, 11]
    for tap in TAPS:
        hist = quickstart_run.Histograms(f"memel/{tap}/log10_phi")
        assert [h.step for h in hist] == [10, 11]
        assert hist[0].histogram_value.num > 0 and hist[0].histogram_value.max < 10  # log10, not phi


def test_hparams_settings_and_final_metrics(quickstart_run):
    values, metrics = hparams(quickstart_run)
    assert values == {
        "memel/selector": "topk", "memel/k": 1.0, "memel/target_ratio": 0.02, "memel/strategy": "reverse",
        "memel/delta": 1.0, "memel/late_start": 10.0, "memel/taps": ",".join(TAPS),
    }
    assert metrics == ["val_acc", "val_acc_top5", "val_loss", "memel/mono_ratio", "memel/fkr"] + [
        f"memel/{t}/mono_ratio" for t in TAPS] + ["memel/kill_concentration"]
    scalars = set(quickstart_run.Tags()["scalars"])
    assert set(metrics) <= scalars  # HParams shows each one's last value
    assert "hp_metric" not in scalars  # no placeholder


def test_aliases_and_kill_map_through_the_callback(tmp_path):
    """``tap_labels`` rename the tags; ``kills_tap`` adds the neuron x step kill map."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from memel_lightning.callback import MEmeLCallback
    from memel_lightning.data.digits import DigitsDataModule
    from memel_lightning.models.digits import DigitsClassifier

    pl.seed_everything(0)
    cb = MEmeLCallback(taps=["hidden.0", "hidden.1"], memel={"late_start": 2}, log_every_n_steps=2,
                       tap_labels={"hidden.1": "late"}, kills_tap="late", image_every_n_steps=4)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=8, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="tb"), callbacks=[cb],
    )
    trainer.fit(DigitsClassifier(hidden_sizes=(16, 12)), DigitsDataModule(batch_size=32))
    acc = accumulator(tmp_path)
    assert cb.labels == {"hidden.0": "hidden.0", "hidden.1": "late"}
    assert "memel/late/mono_ratio" in acc.Tags()["scalars"] and "memel/hidden.1/mono_ratio" not in acc.Tags()["scalars"]
    shots = images(acc, "memel/heatmap/kills")
    assert [s for s, _ in shots] == [1, 5, 7]  # first logged step, every 4 steps, end of fit
    # before late_start nothing is killed; top-1 of 12 neurons from batch 2 on: kills exist
    kills = cb.board.dashboard.kills.matrix()
    assert kills.shape == (12, 4) and kills[:, 0].sum() == 0.0
    assert kills[:, 1:].sum(0) == pytest.approx([1.0] * 3)  # every sample loses one of the 12 neurons
