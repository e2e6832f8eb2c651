"""scikit-learn's bundled handwritten digits: real data that needs no download."""
from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .samplers import EpochSeededSampler, ResumableDataLoader


class DigitsDataModule(pl.LightningDataModule):
    """The 1,797 8x8 grey images of ``sklearn.datasets.load_digits``, 10 classes.

    Batches are ``(images, labels)`` with images ``(B, channels, image_size, image_size)``
    scaled to [0, 1] (bilinear upsampling when ``image_size > 8``). The train/val split
    is fixed by ``seed`` (stratified, ``val_fraction`` of each class) and the training
    order depends only on ``seed`` and the epoch, so resumed runs are exact, also from a
    mid-epoch checkpoint (:class:`~memel_lightning.data.samplers.ResumableDataLoader`).

    Example:
        >>> dm = DigitsDataModule(batch_size=16, image_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((16, 1, 32, 32), torch.int64)
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = 8,
        channels: int = 1,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 (the digits are 8x8), got {image_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.image_size = image_size
        self.channels = channels
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != 8:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        images = images.expand(-1, self.channels, -1, -1).contiguous()
        labels = torch.tensor(digits.target, dtype=torch.long)
        train_idx, val_idx = train_test_split(
            torch.arange(len(labels)).numpy(),
            test_size=self.val_fraction,
            random_state=self.seed,
            stratify=labels.numpy(),
        )
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(self.train_set, seed=self.seed),
            num_workers=self.num_workers,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
