"""Render a matplotlib figure to an RGB array, without touching the global backend."""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure drawn by the Agg canvas (no display, no pyplot state: safe in callbacks)."""
    figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def to_rgb(figure: Figure) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of ``figure`` (for ``add_image(..., dataformats="HWC")``).

    Example:
        >>> fig = new_figure(2, 1)
        >>> to_rgb(fig).shape
        (100, 200, 3)
    """
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
