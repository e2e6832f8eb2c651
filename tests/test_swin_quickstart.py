"""The README's first command, configs/quickstart.yaml, for a few steps through the CLI."""
from pathlib import Path

import pytest
import torch
from tb_utils import read_events

from tests.test_l2e_causal_lm import CONCENTRATION

from memel_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, config):
    return main(
        args=[
            "fit",
            "--config", str(REPO / "configs" / config),
            "--trainer.accelerator=cpu",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=12",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ]
    )


def test_quickstart_config_shows_progress_and_logs_to_tensorboard(tmp_path):
    cli = main(args=["--config", str(REPO / "configs" / "quickstart.yaml")], run=False)  # an overlay
    trainer = cli.config["trainer"]
    assert trainer["enable_progress_bar"] is True
    assert trainer["logger"]["class_path"].endswith("TensorBoardLogger")
    assert trainer["logger"]["init_args"]["save_dir"] == "runs/quickstart"
    assert cli.config["data"]["init_args"]["image_size"] == 32


def test_quickstart_few_steps_tags_and_accuracy(tmp_path):
    cli = _run(tmp_path, "quickstart.yaml")
    model, data = cli.model, cli.datamodule
    assert 1e5 <= sum(p.numel() for p in model.parameters()) <= 1e6  # "about 0.1-1 M parameters"
    taps = [f"model.layers.2.blocks.{i}" for i in range(4)]  # stage 3 of depth 4: blocks 0-3
    callback = next(c for c in cli.trainer.callbacks if type(c).__name__ == "MEmeLCallback")
    assert callback.tap_names == taps
    events = read_events(tmp_path / "runs")
    tags = set(events.Tags()["scalars"])
    for tap in taps:
        for metric in ("selected_frac", "mono_ratio", "phi_mean", "phi_max", CONCENTRATION):
            assert f"memel/{callback.labels[tap]}/{metric}" in tags  # blocks.0 .. blocks.3
        assert f"memel/{callback.labels[tap]}/log10_phi" in events.Tags()["histograms"]
    assert {"memel/mono_ratio", f"memel/{CONCENTRATION}", "train_loss", "val_loss", "val_acc", "val_acc_top5", "lr"} <= tags
    # logged on the trainer's steps (log_every_n_steps 5: batches 4, 9) and the last batch (11);
    # batches 4 and 9 are in the late start (10 batches); from batch 10 top-1 inhibits one
    # value per sample out of 4x4 tokens x 64 channels
    frac = {e.step: e.value for e in events.Scalars(f"memel/{callback.labels[taps[1]]}/selected_frac")}
    assert sorted(frac) == [4, 9, 11]
    assert frac[4] == 0.0 and frac[9] == 0.0
    assert frac[11] == pytest.approx(1 / (4 * 4 * 64), rel=1e-6)
    # the logged val_acc / val_loss equal a direct computation on the first validation batch
    x, y = next(iter(data.val_dataloader()))
    model.eval()
    with torch.no_grad():
        logits = model(x)
    acc = (logits.argmax(-1) == y).double().mean().item()
    top5 = (logits.topk(5, dim=-1).indices == y[:, None]).any(-1).double().mean().item()
    assert events.Scalars("val_acc")[-1].value == pytest.approx(acc, abs=1e-6)
    assert events.Scalars("val_acc_top5")[-1].value == pytest.approx(top5, abs=1e-6)
    loss = torch.nn.functional.cross_entropy(logits.double(), y).item()
    assert events.Scalars("val_loss")[-1].value == pytest.approx(loss, rel=1e-4)


def test_quickstart_baseline_has_no_memel(tmp_path):
    _run(tmp_path, "quickstart_baseline.yaml")
    tags = set(read_events(tmp_path / "runs").Tags()["scalars"])
    assert "val_acc" in tags and not any(t.startswith("memel/") for t in tags)
