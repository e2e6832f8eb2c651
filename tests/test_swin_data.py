"""ImageNetDataModule on a real ImageFolder tree of PNGs written by the test."""
import numpy as np
import pytest
import torch
from PIL import Image

from memel_lightning.data import ImageNetDataModule
from memel_lightning.data.imagenet import ImageFolderLayoutError

CLASSES = ["n01440764", "n01443537", "n01484850"]


def _write_tree(root, per_class=(3, 2)):
    rng = np.random.default_rng(0)
    colours = {}
    for split, n in zip(("train", "val"), per_class):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                # a flat colour per class (with a little noise) so labels are checkable from pixels
                base = np.array([60 + 80 * c, 200 - 70 * c, 40 * (c + 1)], dtype=np.float64)
                img = np.clip(base + rng.normal(0, 2, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{name}_{i}.png")
                colours[name] = base
    return colours


def test_loads_image_folder_with_timm_eval_transform(tmp_path):
    colours = _write_tree(tmp_path)
    dm = ImageNetDataModule(root=str(tmp_path), batch_size=4, num_workers=0, input_size=32, crop_pct=1.0,
                            auto_augment=None, re_prob=0.0)
    assert dm.num_classes == 3 and dm.classes == CLASSES
    assert dm.data_config["interpolation"] == "bicubic"  # from Swin's timm config
    dm.setup("fit")
    assert len(dm.train_set) == 9 and len(dm.val_set) == 6
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    # eval transform = resize + centre crop + ImageNet normalisation: undo it and compare colours
    mean = torch.tensor(dm.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(dm.data_config["std"]).view(1, 3, 1, 1)
    pixels = (x * std + mean).mean(dim=(2, 3)) * 255
    for row, label in zip(pixels, y):
        np.testing.assert_allclose(row.numpy(), colours[CLASSES[label]], atol=3.0)
    xb, yb = next(iter(dm.train_dataloader()))  # augmented training batch, drop_last
    assert xb.shape == (4, 3, 32, 32) and yb.dtype == torch.int64
    assert len(dm.train_dataloader()) == 2


@pytest.mark.parametrize("case", ["missing_root", "no_train", "empty_train", "no_images", "class_mismatch"])
def test_bad_layout_fails_at_once_naming_layout_and_quickstart(tmp_path, case):
    root = tmp_path / "imagenet"
    if case != "missing_root":
        _write_tree(root)
    if case == "no_train":
        import shutil

        shutil.rmtree(root / "train")
    elif case == "empty_train":
        import shutil

        shutil.rmtree(root / "train")
        (root / "train").mkdir()
    elif case == "no_images":
        for f in (root / "train" / CLASSES[0]).iterdir():
            f.unlink()
    elif case == "class_mismatch":
        (root / "val" / CLASSES[2]).rename(root / "val" / "n99999999")
    with pytest.raises(ImageFolderLayoutError) as err:
        ImageNetDataModule(root=str(root), num_workers=0)
    message = str(err.value)
    if case == "class_mismatch":
        assert "n99999999" in message
    else:
        assert "<root>/train/<class name>/" in message and "configs/quickstart.yaml" in message
