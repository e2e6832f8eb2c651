"""Random-number state in checkpoints, so a mid-epoch resume draws what the uninterrupted run drew."""
from __future__ import annotations

import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch


class RNGStateCheckpoint(pl.Callback):
    """Saves the global random states (Python, NumPy, torch CPU and CUDA) in every checkpoint
    and puts them back just before the first training batch of a resumed run.

    Lightning restores weights, optimiser, schedulers and loop counters, not the random
    generators; dropout, drop-path and mixup then draw different numbers after a resume and
    the run drifts from the uninterrupted one. The states are restored at the first
    ``on_train_batch_start`` (not at load time) because Lightning creates the train loader's
    iterator in between, and that draws from the global generator in both runs before the
    batch. Loader workers seed from that draw, so augmentation inside workers
    (``num_workers > 0``) is not made exact by this callback. ``LightningCLI`` runs of this
    package add it automatically (:class:`~memel_lightning.cli.MEmeLCLI`).

    Example:
        >>> cb = RNGStateCheckpoint(); state = cb.state_dict()
        >>> sorted(state)
        ['numpy', 'python', 'torch', 'torch_cuda']
    """

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None

    # Plain tensors and numbers only: Lightning loads checkpoints with ``weights_only=True``.
    def state_dict(self) -> dict[str, Any]:
        version, py_state, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        py, nps = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
        np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                             nps["cached"]))
        torch.set_rng_state(state["torch"])
        if state["torch_cuda"] and torch.cuda.is_available() and len(state["torch_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
