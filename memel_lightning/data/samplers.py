"""Samplers and loaders whose order depends only on (seed, epoch, position), so a
resumed run sees the same batches as an uninterrupted one, also mid-epoch."""
from __future__ import annotations

from typing import Any, Iterator, Sized

import torch
from torch.utils.data import DataLoader, Sampler


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
        self.start = 0  # indices to skip at the start of the next iteration (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        if not self.shuffle:
            return iter(range(start, self.size))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist()[start:])

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that Lightning resumes mid-epoch exactly.

    Lightning saves a train loader's ``state_dict()`` in the checkpoint and calls
    ``load_state_dict()`` on resume; a plain ``DataLoader`` has neither, so a run
    resumed from a mid-epoch checkpoint (``every_n_train_steps``, ``max_steps``) would
    restart the epoch at its first batch. This one records how many batches of the
    current epoch it has served and, after a load, skips that many: through
    :class:`EpochSeededSampler` without loading them when it is the sampler, otherwise
    by drawing and discarding them (e.g. under a ``DistributedSampler``).

    Example:
        >>> data = list(range(10))
        >>> loader = ResumableDataLoader(data, batch_size=2, sampler=EpochSeededSampler(data, seed=0))
        >>> first = [b.tolist() for b in loader]
        >>> loader.load_state_dict({"served": 3})
        >>> [b.tolist() for b in loader] == first[3:]
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served = 0
        self.resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self.resume_at = self.resume_at, 0
        self.served = skip
        discard = skip
        if skip and isinstance(self.sampler, EpochSeededSampler) and self.batch_size is not None:
            self.sampler.start = skip * self.batch_size
            discard = 0
        for i, batch in enumerate(super().__iter__()):
            if i < discard:
                continue
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume_at = int(state["served"])
