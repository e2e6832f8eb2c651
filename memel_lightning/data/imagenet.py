"""ImageNet (or any ImageFolder tree) with timm's train and eval transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from .samplers import EpochSeededSampler, ResumableDataLoader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "<root>/{split}/<class name>/<image>.JPEG (one folder per class, the same class folders in every split)"
FIRST_RUN = "for a first run without ImageNet use: python cli.py fit --config configs/quickstart.yaml"


class ImageFolderLayoutError(FileNotFoundError):
    """The data root does not hold the expected ImageFolder tree."""


def check_image_folder(root: Union[str, Path], split: str) -> list[str]:
    """The class folder names of ``root/split``; a clear error if the tree is missing or empty.

    Only the first class folder is listed for images (ImageNet has 1.28 M files), so the check
    is immediate; torchvision's ``ImageFolder`` then scans the whole tree.

    Example:
        >>> import tempfile, os
        >>> root = tempfile.mkdtemp(); os.makedirs(os.path.join(root, "train", "cat"))
        >>> open(os.path.join(root, "train", "cat", "a.png"), "wb").close()
        >>> check_image_folder(root, "train")
        ['cat']
    """
    root = Path(root).expanduser()
    layout = LAYOUT.format(split=split)
    if not root.is_dir():
        raise ImageFolderLayoutError(f"data root {str(root)!r} does not exist; expected {layout}. {FIRST_RUN}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise ImageFolderLayoutError(
            f"{str(split_dir)!r} does not exist (data root {str(root)!r}); expected {layout}. {FIRST_RUN}"
        )
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise ImageFolderLayoutError(f"{str(split_dir)!r} has no class folders; expected {layout}. {FIRST_RUN}")
    first = split_dir / classes[0]
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in first.iterdir()):
        raise ImageFolderLayoutError(
            f"class folder {str(first)!r} holds no image ({', '.join(IMAGE_SUFFIXES)}); expected {layout}. "
            f"{FIRST_RUN}"
        )
    return classes


class ImageNetDataModule(pl.LightningDataModule):
    """ImageNet-1k in the ImageFolder layout, with timm's transforms for a given model.

    ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the usual
    ``ILSVRC2012`` preparation with the validation images sorted into class folders). A
    missing or empty ``root`` fails at construction with the expected layout.

    The transforms are timm's ``create_transform`` with the data config (input size,
    interpolation, mean, std, crop) of ``model_name`` (resolved from timm's pretrained config,
    without building the model); ``input_size``, ``interpolation``, ``mean``, ``std`` and
    ``crop_pct`` override it. Training adds the augmentation arguments (RandAugment
    ``auto_augment``, ``color_jitter``, random erasing ``re_prob``/``re_mode``/``re_count``),
    set by default to the official Swin recipe. Batches are ``(images, labels)``; the
    training order depends only on ``seed`` and the epoch.

    Example:
        >>> dm = ImageNetDataModule(root="/data/imagenet", batch_size=128)  # doctest: +SKIP
        >>> dm.setup("fit"); x, y = next(iter(dm.train_dataloader()))       # doctest: +SKIP
        >>> x.shape                                                          # doctest: +SKIP
        torch.Size([128, 3, 224, 224])
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        model_name: str = "swin_tiny_patch4_window7_224",
        batch_size: int = 128,
        val_batch_size: Optional[int] = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        train_dir: str = "train",
        val_dir: str = "val",
        input_size: Optional[int] = None,
        interpolation: Optional[str] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        crop_pct: Optional[float] = None,
        auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
        color_jitter: float = 0.4,
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        hflip: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.classes = check_image_folder(self.root, train_dir)
        val_classes = check_image_folder(self.root, val_dir)
        if val_classes != self.classes:
            only_train = sorted(set(self.classes) - set(val_classes))[:5]
            only_val = sorted(set(val_classes) - set(self.classes))[:5]
            raise ImageFolderLayoutError(
                f"class folders differ between {train_dir!r} ({len(self.classes)}) and {val_dir!r} "
                f"({len(val_classes)}) under {str(self.root)!r}: only in train {only_train}, only in val {only_val}"
            )
        self.num_classes = len(self.classes)
        self.batch_size = batch_size
        self.data_config = self._data_config()
        self.train_set: Any = None
        self.val_set: Any = None

    def _data_config(self) -> dict[str, Any]:
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(self.hparams.model_name)
        args = {
            "input_size": None if self.hparams.input_size is None else (3, self.hparams.input_size, self.hparams.input_size),
            "interpolation": self.hparams.interpolation,
            "mean": None if self.hparams.mean is None else tuple(self.hparams.mean),
            "std": None if self.hparams.std is None else tuple(self.hparams.std),
            "crop_pct": self.hparams.crop_pct,
        }
        return resolve_data_config({k: v for k, v in args.items() if v is not None},
                                   pretrained_cfg=None if cfg is None else cfg.to_dict())

    def transform(self, train: bool) -> Any:
        """timm's ``create_transform`` for training (augmented) or evaluation (resize + centre crop)."""
        from timm.data import create_transform

        hp = self.hparams
        if not train:
            return create_transform(**self.data_config, is_training=False)
        return create_transform(
            input_size=self.data_config["input_size"],
            is_training=True,
            interpolation=self.data_config["interpolation"],
            mean=self.data_config["mean"],
            std=self.data_config["std"],
            auto_augment=hp.auto_augment,
            color_jitter=hp.color_jitter,
            re_prob=hp.re_prob,
            re_mode=hp.re_mode,
            re_count=hp.re_count,
            hflip=hp.hflip,
        )

    def setup(self, stage: Optional[str] = None) -> None:
        from torchvision.datasets import ImageFolder

        if self.train_set is None and stage in (None, "fit"):
            self.train_set = ImageFolder(str(self.root / self.hparams.train_dir), transform=self.transform(True))
        if self.val_set is None:
            self.val_set = ImageFolder(str(self.root / self.hparams.val_dir), transform=self.transform(False))

    def _loader(self, dataset: Any, batch_size: int, train: bool = False, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return (ResumableDataLoader if train else DataLoader)(  # mid-epoch resume is exact
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),  # no warning on CPU
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(
            self.train_set,
            self.batch_size,
            train=True,
            sampler=EpochSeededSampler(self.train_set, seed=self.hparams.seed),
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.val_batch_size or self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
