"""Nowcasting frames as one labelled image: input frames, observation, prediction."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor

from .figure import new_figure, to_rgb


def nowcast_frames_image(
    inputs: Tensor, observed: Tensor, predicted: Tensor, vmin: float = 0.0, vmax: float = 1.0, max_frames: int = 10
) -> np.ndarray:
    """One sequence as three labelled rows, time left to right: the ``T_in`` input
    frames (``t-T_in+1 .. t0``), the observed future and the prediction (``t+1 ..``),
    on one fixed grey scale ``[vmin, vmax]``. Frames ``(T, H, W)`` or ``(T, 1, H, W)``;
    more than ``max_frames`` per row are thinned evenly (the last one always shown).
    Returns ``(H, W, 3)`` uint8, for ``add_image(tag, img, step, dataformats="HWC")``.

    Example:
        >>> import torch
        >>> img = nowcast_frames_image(torch.rand(5, 1, 16, 16), torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16))
        >>> img.ndim, img.dtype
        (3, dtype('uint8'))
    """
    rows = {"input": _frames(inputs, "inputs"), "observation": _frames(observed, "observed"),
            "prediction": _frames(predicted, "predicted")}
    if rows["observation"].shape != rows["prediction"].shape:
        raise ValueError(
            f"observed {tuple(rows['observation'].shape)} and predicted {tuple(rows['prediction'].shape)} frames differ"
        )
    t_in, t_out = len(rows["input"]), len(rows["observation"])
    times = {"input": [f"t{t - t_in + 1}" if t < t_in - 1 else "t0" for t in range(t_in)],
             "observation": [f"t+{t + 1}" for t in range(t_out)]}
    times["prediction"] = times["observation"]
    keep = {name: _thin(len(frames), max_frames) for name, frames in rows.items()}
    cols = max(len(k) for k in keep.values())
    frame_h, frame_w = rows["input"].shape[1:]
    cell = 1.1
    figure = new_figure(cols * cell * max(frame_w / frame_h, 0.5) + 1.2, 3 * cell + 0.3)
    grid = figure.subplots(3, cols, squeeze=False)
    for r, name in enumerate(rows):
        for c in range(cols):
            axes = grid[r, c]
            axes.set_xticks([])
            axes.set_yticks([])
            if c >= len(keep[name]):
                axes.set_frame_on(False)
                continue
            t = keep[name][c]
            axes.imshow(rows[name][t], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            axes.set_title(times[name][t], fontsize=7, pad=2)
        grid[r, 0].set_ylabel(name, fontsize=9)
    return to_rgb(figure)


def _frames(x: Tensor, what: str) -> np.ndarray:
    x = x.detach().float().cpu()
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 3 or x.shape[0] == 0:
        raise ValueError(f"{what} frames must be (T, H, W) or (T, 1, H, W) with T >= 1, got {tuple(x.shape)}")
    return x.numpy()


def _thin(count: int, most: int) -> Sequence[int]:
    if count <= most:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, most)})
