"""Step heatmaps: a value per row (layer, neuron) over training steps, as an image."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .figure import new_figure, to_rgb


def step_heatmap(
    matrix: np.ndarray,
    steps: Sequence[int],
    title: str,
    value_label: str,
    row_labels: Optional[Sequence[str]] = None,
    row_axis: str = "layer",
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> np.ndarray:
    """``matrix`` ``(rows, len(steps))`` drawn as cells over the training step, on a
    FIXED colour scale ``[vmin, vmax]`` (images of different steps and runs compare);
    NaN (no value at that step) is grey. Returns ``(H, W, 3)`` uint8.

    ``row_labels`` name the rows (layers); without them rows are numbered (neurons).

    Example:
        >>> img = step_heatmap(np.array([[0.0, 0.5], [1.0, np.nan]]), [10, 20], "mono_ratio",
        ...                    "mono_ratio", ["blocks.0", "blocks.1"])
        >>> img.dtype, img.shape[2]
        (dtype('uint8'), 3)
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    steps = [int(s) for s in steps]
    if matrix.ndim != 2 or matrix.shape[1] != len(steps) or not steps:
        raise ValueError(f"step_heatmap needs a (rows, {len(steps)}) matrix with >= 1 step, got {matrix.shape}")
    if row_labels is not None and len(row_labels) != matrix.shape[0]:
        raise ValueError(f"{len(row_labels)} row labels for {matrix.shape[0]} rows")
    rows = matrix.shape[0]
    height = 2.2 + (0.28 * rows if row_labels is not None else 2.0)
    figure = new_figure(8.0, min(height, 9.0))
    axes = figure.add_subplot()
    cmap = _colormap()
    mesh = axes.pcolormesh(_edges(steps), np.arange(rows + 1) - 0.5, np.ma.masked_invalid(matrix),
                           cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
    axes.set_ylim(rows - 0.5, -0.5)  # first layer / neuron at the top
    if row_labels is not None:
        axes.set_yticks(range(rows), labels=list(row_labels), fontsize=8 if rows <= 24 else 6)
    axes.set_xlabel("training step")
    axes.set_ylabel(row_axis)
    axes.set_title(title, fontsize=10)
    figure.colorbar(mesh, ax=axes, label=value_label, fraction=0.05, pad=0.02)
    return to_rgb(figure)


def _edges(steps: list[int]) -> np.ndarray:
    """Cell boundaries half-way between logged steps (cells as wide as the cadence)."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    s = np.asarray(steps, dtype=np.float64)
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _colormap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d0d0d0")
