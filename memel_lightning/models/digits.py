"""A small MLP on the 8x8 digits: the first run of the framework."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


class DigitsClassifier(pl.LightningModule):
    """An MLP classifier for :class:`~memel_lightning.data.DigitsDataModule` images.

    ``hidden.<i>`` is the i-th hidden block (Linear then ReLU); its output is a tap,
    and :meth:`memel_taps` returns all of them. Logs ``train_loss``, ``val_loss`` and
    ``val_acc``.

    Example:
        >>> model = DigitsClassifier(hidden_sizes=(32,))
        >>> model(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
        >>> model.memel_taps()
        ['hidden.0']
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (128, 128),
        in_features: int = 64,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        blocks = []
        width = in_features
        for size in hidden_sizes:
            blocks.append(nn.Sequential(OrderedDict(fc=nn.Linear(width, size), act=nn.ReLU())))
            width = size
        self.hidden = nn.ModuleList(blocks)
        self.head = nn.Linear(width, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def memel_taps(self) -> list[str]:
        return [f"hidden.{i}" for i in range(len(self.hidden))]

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for block in self.hidden:
            h = block(h)
        return self.head(h)

    def memel_labels(self, batch: tuple[Tensor, Tensor]) -> Optional[Tensor]:
        """Feature labels for the labelled False Killing Rate: the digit of each image."""
        return batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.val_acc(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).argmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
