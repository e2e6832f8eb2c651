"""Samplers whose order depends only on (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one."""
from __future__ import annotations

from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """A random permutation drawn from ``seed + epoch``.

    Lightning calls ``set_epoch`` at the start of every epoch (as for
    ``DistributedSampler``), so the order of epoch ``e`` is the same whether or not the
    run was interrupted and resumed before it.

    Example:
        >>> s = EpochSeededSampler(range(5), seed=0)
        >>> s.set_epoch(1); a = list(s); s.set_epoch(1); a == list(s)
        True
    """

    def __init__(self, data: Sized, seed: int = 0, shuffle: bool = True) -> None:
        self.size = len(data)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size
