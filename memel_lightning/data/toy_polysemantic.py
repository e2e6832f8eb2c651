"""Sparse independent features with known ground truth (the incidental polysemanticity setting)."""
from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from .samplers import EpochSeededSampler, ResumableDataLoader


def sparse_features(
    num: int,
    n_features: int,
    p_active: float,
    generator: torch.Generator,
    magnitude: str = "uniform",
) -> Tensor:
    """``num`` samples of ``n_features`` independent sparse features.

    Feature ``i`` of a sample is active with probability ``p_active``; an active feature
    has magnitude ``U(0, 1]`` (``magnitude="uniform"``) or 1 (``"binary"``); inactive
    features are 0.
    """
    active = torch.rand(num, n_features, generator=generator) < p_active
    if magnitude == "uniform":
        values = 1.0 - torch.rand(num, n_features, generator=generator)  # (0, 1]
    elif magnitude == "binary":
        values = torch.ones(num, n_features)
    else:
        raise ValueError(f"magnitude must be 'uniform' or 'binary', got {magnitude!r}")
    return values * active


def dominant_feature(x: Tensor) -> Tensor:
    """The label of a sample: its largest active feature, or ``n_features`` when none is active."""
    label = x.argmax(dim=1)
    return torch.where(x.amax(dim=1) > 0, label, torch.full_like(label, x.shape[1]))


class PolysemanticDataModule(pl.LightningDataModule):
    """Generated sparse features for :class:`~memel_lightning.models.PolysemanticToy`.

    Every sample is ``n_features`` independent features, each active with probability
    ``p_active`` (magnitude ``U(0, 1]`` or 1). Batches are ``(x, y)``: ``x`` the features
    ``(B, n_features)`` (the model reconstructs them) and ``y`` the dominant feature (the
    index of the largest active one, or ``n_features`` for an all-zero sample), which the
    probes use as a label. Train and validation sets are drawn once from ``seed``; the
    training order depends only on ``seed`` and the epoch.

    Example:
        >>> dm = PolysemanticDataModule(n_features=8, train_size=64, val_size=32, batch_size=16)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), int(y.max()) <= 8
        ((16, 8), True)
    """

    def __init__(
        self,
        n_features: int = 20,
        p_active: float = 0.05,
        magnitude: str = "uniform",
        train_size: int = 20000,
        val_size: int = 4000,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < p_active <= 1.0:
            raise ValueError(f"p_active must be in (0, 1], got {p_active}")
        if n_features < 1 or train_size < 1 or val_size < 1:
            raise ValueError("n_features, train_size and val_size must be >= 1")
        self.save_hyperparameters()
        self.n_features = n_features
        self.p_active = p_active
        self.magnitude = magnitude
        self.train_size = train_size
        self.val_size = val_size
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: Optional[TensorDataset] = None
        self.val_set: Optional[TensorDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        train = sparse_features(self.train_size, self.n_features, self.p_active, gen, self.magnitude)
        val = sparse_features(self.val_size, self.n_features, self.p_active, gen, self.magnitude)
        self.train_set = TensorDataset(train, dominant_feature(train))
        self.val_set = TensorDataset(val, dominant_feature(val))

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(  # mid-epoch resume is exact
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(self.train_set, seed=self.seed),
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1024)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
