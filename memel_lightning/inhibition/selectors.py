"""Selecting the monosemantic activations from their phi scores (docs/method.md §4).

A selector maps phi, shaped ``(N, F)`` (N samples, F neurons), and an optional bool
validity mask of the same shape to a bool selection of that shape. Masked values are
never selected. Selectors are ``nn.Module`` so that the stateful one keeps its state
in ``state_dict``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


MIN_TAU = 1e-6


class Selector(nn.Module):
    """Base class: ``forward(phi, mask=None, update=True) -> bool selection``."""

    sync_dist: bool = False

    def forward(self, phi: Tensor, mask: Optional[Tensor] = None, update: bool = True) -> Tensor:
        raise NotImplementedError


class TopK(Selector):
    """For every sample (row) the ``k`` values of highest phi across the tap's neurons (§4.1).

    All values tied with the k-th largest are selected too (docs/method.md §4.1:
    ties are all selected), so a row may hold more than ``k`` selections.

    Example:
        >>> TopK(k=1)(torch.tensor([[1.0, 3.0, 3.0], [5.0, 0.0, 1.0]]))
        tensor([[False,  True,  True],
                [ True, False, False]])
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"TopK needs k >= 1, got {k}")
        self.k = int(k)

    def forward(self, phi: Tensor, mask: Optional[Tensor] = None, update: bool = True) -> Tensor:
        scores = phi if mask is None else phi.masked_fill(~mask, float("-inf"))
        k = min(self.k, scores.shape[1])
        if k == 1:  # the common case: a max is far cheaper than topk
            kth = scores.amax(dim=1, keepdim=True)
        else:
            kth = scores.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
        selected = scores >= kth
        return selected if mask is None else selected & mask

    def extra_repr(self) -> str:
        return f"k={self.k}"


class Threshold(Selector):
    """Every value with ``phi > tau`` (a fixed threshold, docs/method.md §4.2)."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        if tau is None or not math.isfinite(tau):
            raise ValueError(f"Threshold needs a finite tau, got {tau}")
        self.tau = float(tau)

    def forward(self, phi: Tensor, mask: Optional[Tensor] = None, update: bool = True) -> Tensor:
        selected = phi > self.tau
        return selected if mask is None else selected & mask

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class MovingThreshold(Selector):
    r"""One scalar threshold per tap that tracks the ``(1 - rho)`` quantile of phi (§4.3).

    Selects ``phi > tau`` with the current ``tau``, then, in training, nudges ``tau`` by
    the selected fraction ``f`` of this step (a Robbins-Monro quantile tracker in log
    space, so the step is relative and independent of phi's scale)::

        log tau <- log tau + lr * clip((f - rho) / rho, -1, 1)

    The fixed point is ``E[f] = rho``; since ``f`` falls as ``tau`` rises, the update moves
    ``tau`` toward it from either side, and for ``lr * tau * p(tau) / rho < 2``
    (p: the density of phi at the quantile) the iteration contracts, so on a
    stationary stream ``f`` converges to ``rho``. ``tau`` starts at the exact
    ``(1 - rho)`` quantile of the first batch (one ``kthvalue``, once); afterwards the
    cost is one comparison and one count per step: no sort. Under data parallelism
    the counts are all-reduced so all ranks keep the same ``tau``.

    Example:
        >>> sel = MovingThreshold(target_ratio=0.1)
        >>> phi = torch.arange(100.0).reshape(1, 100)
        >>> int(sel(phi).sum())  # tau starts at the 90 % quantile
        10
    """

    def __init__(self, target_ratio: float = 0.02, lr: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < target_ratio < 1.0:
            raise ValueError(f"target_ratio must be in (0, 1), got {target_ratio}")
        self.target_ratio = float(target_ratio)
        self.lr = float(lr)
        self.register_buffer("tau", torch.tensor(float("nan")))
        self.register_buffer("last_fraction", torch.tensor(0.0))
        self._started: Optional[bool] = False  # None: unknown after a load (read tau once)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._started = None

    @torch.no_grad()
    def _initial_tau(self, phi: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
        values = phi.flatten() if mask is None else phi[mask]  # once: a host sync is fine here
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return None
        k = max(1, min(values.numel(), math.ceil((1.0 - self.target_ratio) * values.numel())))
        # A multiplicative update cannot leave 0: start at a small positive tau at least.
        return values.float().kthvalue(k).values.clamp(min=MIN_TAU)

    def forward(self, phi: Tensor, mask: Optional[Tensor] = None, update: bool = True) -> Tensor:
        if self._started is None:
            self._started = not bool(torch.isnan(self.tau))  # once after a checkpoint load
        if not self._started:
            tau0 = self._initial_tau(phi, mask) if update else None
            if tau0 is None:  # nothing to start from (eval before training, or all masked)
                return torch.zeros_like(phi, dtype=torch.bool)
            self.tau = tau0.to(self.tau)
            if self.sync_dist and dist.is_available() and dist.is_initialized():
                dist.all_reduce(self.tau)  # every rank starts from the mean of the ranks' quantiles
                self.tau /= dist.get_world_size()
            self._started = True
        selected = phi > self.tau
        if mask is not None:
            selected &= mask
        if update:
            self._update(selected, mask)
        return selected

    @torch.no_grad()
    def _update(self, selected: Tensor, mask: Optional[Tensor]) -> None:
        # Everything stays on the device: no .item(), no tensor built from a host value
        # (a host-to-device copy of a pageable scalar would synchronise the stream).
        hits = selected.sum(dtype=torch.float32)
        if self.sync_dist and dist.is_available() and dist.is_initialized():
            total = hits.new_full((), float(selected.numel())) if mask is None else mask.sum(dtype=torch.float32)
            counts = torch.stack([hits, total])
            dist.all_reduce(counts)
            fraction = counts[0] / counts[1].clamp(min=1.0)
        elif mask is None:
            fraction = hits / max(selected.numel(), 1)
        else:
            fraction = hits / mask.sum(dtype=torch.float32).clamp(min=1.0)
        # docs/method.md §4.3: log tau <- log tau + lr * clip((f - rho) / rho, -1, 1)
        step = ((fraction - self.target_ratio) / self.target_ratio).clamp_(-1.0, 1.0)
        self.tau.mul_(torch.exp(step.mul_(self.lr)))
        self.last_fraction.copy_(fraction)

    def extra_repr(self) -> str:
        return f"target_ratio={self.target_ratio}, lr={self.lr}"


SELECTORS: dict[str, type[Selector]] = {
    "topk": TopK,
    "threshold": Threshold,
    "moving_threshold": MovingThreshold,
}


def build_selector(
    name: str, *, k: int = 1, tau: Optional[float] = None, target_ratio: float = 0.02, lr: float = 0.1
) -> Selector:
    """Build a selector by its name: ``topk``, ``threshold`` or ``moving_threshold`` (§4)."""
    if name == "topk":
        return TopK(k)
    if name == "threshold":
        if tau is None:
            raise ValueError("selector='threshold' needs tau (phi above which a value is selected)")
        return Threshold(tau)
    if name == "moving_threshold":
        return MovingThreshold(target_ratio, lr)
    raise ValueError(f"unknown selector {name!r}; choose one of {sorted(SELECTORS)}")
