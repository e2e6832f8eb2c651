"""HKO-7 benchmark metrics (Shi et al. 2017; docs/method.md §9) as torchmetrics ``Metric`` s.

Conversions (docs/method.md §9)::

    dBZ = 70 p - 10                  (pixel p in [0, 1])
    Z   = 10^(dBZ / 10),  Z = a R^b  (a = 58.53, b = 1.56)  =>  R = (Z / a)^(1 / b)  [mm/h]

Scores, per rain-rate threshold ``t`` in (0.5, 2, 5, 10, 30) mm/h, where a pixel is
"rain" when ``R >= t`` (the benchmark's ``>=``), counting only pixels where the mask is
true:

    CSI = TP / (TP + FN + FP)
    HSS = 2 (TP TN - FN FP) / ((TP + FN)(FN + TN) + (TP + FP)(FP + TN))

Balanced errors weight each pixel by ``w(R_target)`` = 1, 1, 2, 5, 10, 30 for target rain
rates below 0.5, in [0.5, 2), [2, 5), [5, 10), [10, 30), >= 30 mm/h, times the mask.
The error itself is on pixel values, as in the benchmark::

    B-MSE = 1 / N_frames * sum_frames sum_pixels w * (p_pred - p_target)^2
    B-MAE = 1 / N_frames * sum_frames sum_pixels w * |p_pred - p_target|

i.e. summed over the pixels of a frame and averaged over frames and sequences
(``N_frames`` = number of sequences x frames per sequence). With ``seq_len`` the errors
are kept per output frame (lead time) ``t``, as the benchmark's evaluator reports them::

    B-MSE[t] = 1 / N_seq * sum_sequences sum_pixels w * (p_pred[t] - p_target[t])^2

and ``compute`` returns the ``(seq_len,)`` vector; its mean over ``t`` is the figure of
the papers' tables (and equals the pooled value above).

Inputs are 5-D: ``(T, B, C, H, W)`` (time-first, the benchmark's layout) or ``(B, T, C, H,
W)`` (``time_axis=1``); predictions and targets in pixel units [0, 1]. ``mask`` (bool or
0/1, same shape, true = use the pixel) is optional. All sums are float64 or int64 states
with ``dist_reduce_fx="sum"``, so results under DDP equal those of the global data.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

THRESHOLDS: tuple[float, ...] = (0.5, 2.0, 5.0, 10.0, 30.0)
BALANCING_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)
ZR_A: float = 58.53
ZR_B: float = 1.56

__all__ = [
    "THRESHOLDS",
    "BALANCING_WEIGHTS",
    "ZR_A",
    "ZR_B",
    "pixel_to_dbz",
    "pixel_to_rainfall",
    "rainfall_to_pixel",
    "balancing_weights",
    "threshold_name",
    "BalancedMSE",
    "BalancedMAE",
    "CSI",
    "HSS",
]


def pixel_to_dbz(pixel: Tensor) -> Tensor:
    """``dBZ = 70 p - 10``."""
    return pixel * 70.0 - 10.0


def pixel_to_rainfall(pixel: Tensor, a: float = ZR_A, b: float = ZR_B) -> Tensor:
    """Rain rate in mm/h: ``Z = 10^(dBZ/10)``, ``R = (Z / a)^(1/b)``.

    Example:
        >>> round(float(pixel_to_rainfall(torch.tensor(0.5, dtype=torch.float64))), 4)   # 25 dBZ
        2.9487
    """
    z = torch.pow(10.0, pixel_to_dbz(pixel) / 10.0)
    return torch.pow(z / a, 1.0 / b)


def rainfall_to_pixel(rain: Tensor, a: float = ZR_A, b: float = ZR_B) -> Tensor:
    """Inverse of :func:`pixel_to_rainfall`: ``p = (10 log10(a R^b) + 10) / 70``."""
    dbz = 10.0 * (math.log10(a) + b * torch.log10(rain))
    return (dbz + 10.0) / 70.0


def _pixel_thresholds(thresholds: Sequence[float], a: float, b: float) -> list[float]:
    """Rain-rate thresholds as pixel values (float64). ``R(p) >= t`` iff ``p >= p_t``
    because R is increasing in p; comparing in pixel space is what the benchmark does."""
    return [float(rainfall_to_pixel(torch.tensor(float(t), dtype=torch.float64), a, b)) for t in thresholds]


def balancing_weights(
    target: Tensor,
    thresholds: Sequence[float] = THRESHOLDS,
    weights: Sequence[float] = BALANCING_WEIGHTS,
    a: float = ZR_A,
    b: float = ZR_B,
) -> Tensor:
    """Per-pixel weight ``w(R(target))``: ``weights[k]`` for the k-th rain-rate bin
    (bins split at ``thresholds``), in ``target``'s dtype.

    Example:
        >>> p = rainfall_to_pixel(torch.tensor([0.1, 1.0, 3.0, 7.0, 20.0, 40.0], dtype=torch.float64))
        >>> balancing_weights(p).tolist()
        [1.0, 1.0, 2.0, 5.0, 10.0, 30.0]
    """
    if len(weights) != len(thresholds) + 1:
        raise ValueError(f"need len(weights) == len(thresholds) + 1, got {len(weights)} and {len(thresholds)}")
    w = torch.full_like(target, float(weights[0]))
    for p_t, lo, hi in zip(_pixel_thresholds(thresholds, a, b), weights[:-1], weights[1:]):
        w = w + (target >= p_t).to(target.dtype) * (float(hi) - float(lo))
    return w


def threshold_name(threshold: float) -> str:
    """Tag-safe name of a threshold: ``0.5 -> '0p5'``, ``2.0 -> '2'`` (``val_csi_0p5``)."""
    return f"{threshold:g}".replace(".", "p")


def _prepare(preds: Tensor, target: Tensor, mask: Optional[Tensor], name: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    if preds.shape != target.shape:
        raise ValueError(f"{name}: preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
    if preds.dim() != 5:
        raise ValueError(
            f"{name}: expected 5-D frames (T, B, C, H, W) or (B, T, C, H, W), got shape {tuple(preds.shape)}"
        )
    if mask is not None:
        if mask.shape != preds.shape:
            try:
                mask = mask.expand(preds.shape)
            except RuntimeError:
                raise ValueError(
                    f"{name}: mask {tuple(mask.shape)} does not broadcast to the frames {tuple(preds.shape)}"
                ) from None
        mask = mask.to(device=preds.device) != 0
    return preds.detach().to(torch.float64), target.detach().to(torch.float64), mask


class _BalancedError(Metric):
    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    power: int = 2

    def __init__(
        self,
        thresholds: Sequence[float] = THRESHOLDS,
        weights: Sequence[float] = BALANCING_WEIGHTS,
        a: float = ZR_A,
        b: float = ZR_B,
        seq_len: Optional[int] = None,
        time_axis: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if len(weights) != len(thresholds) + 1:
            raise ValueError(f"need len(weights) == len(thresholds) + 1, got {len(weights)} and {len(thresholds)}")
        if time_axis not in (0, 1):
            raise ValueError(f"time_axis must be 0 (T, B, ...) or 1 (B, T, ...), got {time_axis}")
        if seq_len is not None and seq_len < 1:
            raise ValueError(f"seq_len must be >= 1 or None, got {seq_len}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.weights = tuple(float(w) for w in weights)
        self.a, self.b = float(a), float(b)
        self.seq_len, self.time_axis = seq_len, time_axis
        shape = () if seq_len is None else (int(seq_len),)
        self.add_state("total", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        preds, target, mask = _prepare(preds, target, mask, type(self).__name__)
        w = balancing_weights(target, self.thresholds, self.weights, self.a, self.b)
        if mask is not None:
            w = w * mask
        err = (preds - target).abs() if self.power == 1 else (preds - target).square()
        per = w * err
        if self.seq_len is None:
            self.total += per.sum()
            self.frames += preds.shape[0] * preds.shape[1]
            return
        if self.time_axis == 1:
            per = per.transpose(0, 1)
        if per.shape[0] != self.seq_len:
            raise ValueError(
                f"{type(self).__name__}: seq_len={self.seq_len} but the frames have {per.shape[0]} time steps "
                f"(shape {tuple(preds.shape)}, time_axis={self.time_axis})"
            )
        self.total += per.sum(dim=(1, 2, 3, 4))
        self.frames += per.shape[1]  # sequences

    def compute(self) -> Tensor:
        """The pooled error (scalar), or with ``seq_len`` the ``(seq_len,)`` per-frame errors."""
        return self.total / self.frames.clamp(min=1)


class BalancedMSE(_BalancedError):
    """B-MSE of the HKO-7 benchmark: weighted squared pixel error, summed over the pixels
    of a frame and averaged over frames and sequences (module docstring).

    Example:
        >>> m = BalancedMSE()
        >>> x = torch.zeros(2, 3, 1, 4, 4)
        >>> m.update(x + 0.1, x); round(float(m.compute()), 6)   # 16 pixels * 0.01 * weight 1
        0.16
        >>> per_frame = BalancedMSE(seq_len=2)
        >>> per_frame.update(x + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1, 1), x)
        >>> [round(v, 6) for v in per_frame.compute().tolist()]   # frame 1: 16 * 0.04
        [0.16, 0.64]
    """

    power = 2


class BalancedMAE(_BalancedError):
    """B-MAE of the HKO-7 benchmark: as :class:`BalancedMSE` with ``|p_pred - p_target|``.

    Example:
        >>> m = BalancedMAE()
        >>> x = torch.zeros(2, 3, 1, 4, 4)
        >>> m.update(x + 0.1, x, mask=torch.ones_like(x, dtype=torch.bool)); round(float(m.compute()), 6)
        1.6
    """

    power = 1


class _Contingency(Metric):
    """TP/FN/FP/TN per threshold, pooled (``seq_len=None``) or per lead time."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        thresholds: Sequence[float] = THRESHOLDS,
        a: float = ZR_A,
        b: float = ZR_B,
        time_axis: int = 0,
        seq_len: Optional[int] = None,
        zero_division: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if time_axis not in (0, 1):
            raise ValueError(f"time_axis must be 0 (T, B, ...) or 1 (B, T, ...), got {time_axis}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.a, self.b = float(a), float(b)
        self.pixel_thresholds = _pixel_thresholds(self.thresholds, self.a, self.b)
        self.time_axis = time_axis
        self.seq_len = seq_len
        self.zero_division = float(zero_division)
        shape = (len(self.thresholds),) if seq_len is None else (int(seq_len), len(self.thresholds))
        for name in ("tp", "fn", "fp", "tn"):
            self.add_state(name, default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Optional[Tensor] = None) -> None:
        preds, target, mask = _prepare(preds, target, mask, type(self).__name__)
        if self.time_axis == 1:
            preds, target = preds.transpose(0, 1), target.transpose(0, 1)
            mask = None if mask is None else mask.transpose(0, 1)
        if self.seq_len is not None and preds.shape[0] != self.seq_len:
            raise ValueError(
                f"{type(self).__name__}: seq_len={self.seq_len} but the frames have {preds.shape[0]} time steps "
                f"(shape {tuple(preds.shape)}, time_axis={self.time_axis})"
            )
        dims = (1, 2, 3, 4) if self.seq_len is not None else (0, 1, 2, 3, 4)
        counts = {k: [] for k in ("tp", "fn", "fp", "tn")}
        for p_t in self.pixel_thresholds:
            hp, ht = preds >= p_t, target >= p_t
            cells = {"tp": hp & ht, "fn": ~hp & ht, "fp": hp & ~ht, "tn": ~hp & ~ht}
            for k, c in cells.items():
                if mask is not None:
                    c = c & mask
                counts[k].append(c.sum(dim=dims))
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + torch.stack(v, dim=-1))

    def _score(self, tp: Tensor, fn: Tensor, fp: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def compute(self) -> Tensor:
        """Scores of shape ``(len(thresholds),)``; with ``seq_len`` the mean over lead times
        of the per-lead-time scores (the benchmark's per-frame tables, averaged)."""
        tp, fn, fp, tn = (getattr(self, k).to(torch.float64) for k in ("tp", "fn", "fp", "tn"))
        num, den = self._score(tp, fn, fp, tn)
        score = torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)),
                            torch.full_like(den, self.zero_division))
        return score if self.seq_len is None else score.mean(0)


class CSI(_Contingency):
    """Critical Success Index ``TP / (TP + FN + FP)`` per rain-rate threshold.

    Counts are pooled over all frames and sequences, or kept per lead time when
    ``seq_len`` is given (then ``compute`` averages the per-lead-time CSIs). A threshold
    whose denominator is 0 (no rain predicted nor observed) scores ``zero_division``.

    Example:
        >>> m = CSI(thresholds=(0.5,))
        >>> t = torch.zeros(1, 1, 1, 1, 4); t[..., :2] = 0.5     # 2 rainy pixels
        >>> p = torch.zeros_like(t); p[..., 1:3] = 0.5           # 1 hit, 1 false alarm
        >>> round(float(m(p, t)), 4)   # one threshold: torchmetrics squeezes to a scalar
        0.3333
    """

    def _score(self, tp, fn, fp, tn):
        return tp, tp + fn + fp


class HSS(_Contingency):
    """Heidke Skill Score ``2(TP TN - FN FP) / ((TP+FN)(FN+TN) + (TP+FP)(FP+TN))`` per
    rain-rate threshold; pooling and ``zero_division`` as :class:`CSI`.

    Example:
        >>> m = HSS(thresholds=(0.5,))
        >>> t = torch.zeros(1, 1, 1, 1, 4); t[..., :2] = 0.5
        >>> float(m(t, t))
        1.0
    """

    def _score(self, tp, fn, fp, tn):
        return 2.0 * (tp * tn - fn * fp), (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
