"""configs/swin_memel.yaml and swin_baseline.yaml: parse, build, and train two steps on a tiny tree."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tb_utils import scalar_tags

from memel_lightning.cli import main
from memel_lightning.data.imagenet import ImageFolderLayoutError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(root, classes=4, per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32"]


def test_missing_imagenet_points_to_quickstart(tmp_path):
    # jsonargparse re-raises the data module's error inside its own message: the text survives
    with pytest.raises((ImageFolderLayoutError, ValueError), match=r"(?s)<root>/train/<class name>.*configs/quickstart.yaml"):
        main(args=["--config", str(REPO / "configs" / "swin_memel.yaml"), *CPU,
                   f"--data.init_args.root={tmp_path / 'nowhere'}"], run=False)


def test_swin_memel_config_is_the_official_recipe_on_swin_t(tmp_path):
    root = _tree(tmp_path / "imagenet")
    cli = main(args=["--config", str(REPO / "configs" / "swin_memel.yaml"), *CPU,
                     f"--data.init_args.root={root}", "--data.init_args.num_workers=0"], run=False)
    hp = cli.model.hparams
    assert (hp.model_name, hp.lr, hp.warmup_lr, hp.min_lr, hp.lr_base_batch_size) == (
        "swin_tiny_patch4_window7_224", 2e-5, 2e-8, 2e-7, 512)
    assert (hp.weight_decay, hp.warmup_epochs, hp.label_smoothing, hp.mixup_alpha, hp.cutmix_alpha) == (
        1e-8, 5, 0.1, 0.8, 1.0)
    assert cli.trainer.max_epochs == 30 and cli.datamodule.batch_size == 128
    assert cli.model.memel_taps() == [f"model.layers.2.blocks.{i}" for i in (1, 2, 3, 4)]
    assert cli.datamodule.data_config["input_size"] == (3, 224, 224)
    assert cli.datamodule.data_config["crop_pct"] == 0.875


@pytest.mark.parametrize("config", ["swin_memel.yaml", "swin_baseline.yaml"])
def test_swin_configs_train_two_steps_on_a_tiny_tree(tmp_path, config):
    # the full recipe (mixup, cutmix, RandAugment, erasing, lr scaling, clipping) with a tiny Swin on 32x32
    root = _tree(tmp_path / "imagenet")
    main(args=["fit", "--config", str(REPO / "configs" / config), *CPU,
               f"--data.init_args.root={root}", "--data.init_args.num_workers=0",
               "--data.init_args.batch_size=4", "--data.init_args.input_size=32",
               "--model.init_args.num_classes=4",
               '--model.init_args.model_kwargs={"embed_dim": 8, "num_heads": [1, 1, 1, 1], "img_size": 32, '
               '"patch_size": 2, "window_size": 4, "drop_path_rate": 0.1}',
               "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.log_every_n_steps=1",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               f"--trainer.default_root_dir={tmp_path}",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
               f"--trainer.callbacks+={{'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint', 'init_args': {{'dirpath': '{tmp_path / 'ckpt'}'}}}}"])
    tags = scalar_tags(tmp_path / "runs")
    assert {"train_loss", "val_acc", "val_acc_top5", "lr"} <= tags
    assert any(t.startswith("memel/") for t in tags) == (config == "swin_memel.yaml")
