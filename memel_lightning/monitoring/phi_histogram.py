"""Histograms of log10(phi) per tap with the tau_report line: where the monosemantic tail is."""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from .figure import new_figure, to_rgb

FLOOR = -6.0  # log10(phi) below this (phi ~ 0, or exactly 0) is drawn at the floor


def log10_phi(sample: Tensor) -> Tensor:
    """``log10(phi)`` in float32 on the CPU, non-finite values dropped, floored at 1e-6.

    Example:
        >>> log10_phi(torch.tensor([0.0, 1.0, 100.0, float("nan")])).tolist()
        [-6.0, 0.0, 2.0]
    """
    values = sample.detach().flatten().double().cpu()
    values = values[torch.isfinite(values)]
    return values.clamp(min=10.0 ** FLOOR).log10().float()


def phi_histogram_image(
    samples: Mapping[str, Tensor], tau_report: float, title: str,
    mono_ratios: Optional[Mapping[str, float]] = None, bins: int = 60,
) -> np.ndarray:
    """One panel per tap (``{label: phi sample}``): the histogram of ``log10(phi)``
    with a log-scale count axis (the tail is a small share), a dashed line at
    ``log10(tau_report)``, the share of values above it and, when given, the tap's
    ``mono_ratio`` at that step. ``(H, W, 3)`` uint8.

    The values right of the line are what ``mono_ratio`` is made of: it is the share of
    neurons with at least one value of the step above ``tau_report`` (docs/method.md §6),
    so it is larger than the share of values above the line.

    Example:
        >>> img = phi_histogram_image({"blocks.0": torch.rand(1000) * 20}, 9.0, "step 10")
        >>> img.shape[2]
        3
    """
    if not samples:
        raise ValueError("phi_histogram_image needs at least one tap's phi sample")
    if not (tau_report > 0 and math.isfinite(tau_report)):
        raise ValueError(f"tau_report must be a positive finite number, got {tau_report}")
    logs = {label: log10_phi(s).numpy() for label, s in samples.items()}
    line = math.log10(tau_report)
    top = max([line + 1.0] + [float(v.max()) + 0.1 for v in logs.values() if v.size])
    low = min([line - 4.0] + [float(np.percentile(v, 0.5)) for v in logs.values() if v.size])
    edges = np.linspace(max(low, FLOOR), top, bins + 1)
    cols = min(len(logs), 4)
    rows = math.ceil(len(logs) / cols)
    figure = new_figure(2.8 * cols + 0.4, 2.1 * rows + 0.6)
    figure.suptitle(f"{title}: log10(phi) per tap, dashed line = log10(tau_report = {tau_report:g})", fontsize=9)
    grid = figure.subplots(rows, cols, squeeze=False, sharex=True)
    for axes, (label, values) in zip(grid.flat, logs.items()):
        above = float((values > line).mean()) if values.size else float("nan")
        axes.hist(np.clip(values, edges[0], edges[-1]), bins=edges, color="#4878a8")
        axes.axvline(line, color="#d62728", linestyle="--", linewidth=1.2)
        axes.set_yscale("log")
        mono = "" if mono_ratios is None or label not in mono_ratios else f", mono_ratio {mono_ratios[label]:.3f}"
        axes.set_title(f"{label}\n{above:.2%} of values > tau{mono}", fontsize=8)
        axes.tick_params(labelsize=7)
    for axes in grid[-1]:
        axes.set_xlabel("log10(phi)", fontsize=8)
    for axes in grid[:, 0]:
        axes.set_ylabel("values", fontsize=8)
    for axes in list(grid.flat)[len(logs):]:
        axes.set_visible(False)
    return to_rgb(figure)
