"""Synthetic radar echoes written in the HKO-7 on-disk layout.

HKO-7 is distributed on request, so this module writes a stand-in with the same files
(radar PNGs, ``.mask`` files, pandas frame lists; see :mod:`memel_lightning.data.hko7`)
and the static masks ``mask_dat.npz``) for :class:`~memel_lightning.data.HKO7DataModule`
to read: the real loader is what the tests and the demo exercise.

Each "rainy day" is ``frames_per_day`` 6-minute frames from 00:00. Rain cells are
Gaussian reflectivity blobs that drift with the day's steering wind (plus a small
per-cell deviation), grow and then decay over their lifetime (peak reflectivity and
radius follow ``sin(pi * age / lifetime)``), and are born at random through the day.
The reflectivity of a pixel is the strongest cell's, ``dBZ = peak * envelope *
exp(-d^2 / (2 sigma^2))``, stored as ``p = round(255 * (dBZ + 10) / 70)`` where
``dBZ >= 5`` (0, no echo, elsewhere), plus sparse weak clutter.

The mask follows the benchmark's ``precompute_mask``: a pixel is used when it is
inside the radar range (a disc of radius ``size / 2``) and is not weak noise
(``0 < p < round(0.28 * 255)``). Frames are dropped from a day at random
(``drop_prob``): neither written nor listed, so the loader must skip the gaps. The
static ``exclude_mask`` (and ``out_boundary_mask``) mark the pixels outside the radar
disc, ``outlier_mask`` is empty.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from .hko7_files import DEFAULT_FRAME_LISTS, SPLITS, STATIC_MASK_KEYS, frame_path, mask_path, write_mask

NOISE_THRESHOLD = round(0.28 * 255)  # the benchmark's FILTER_RAINFALL_THRESHOLD in 8-bit units
MIN_ECHO_DBZ = 5.0  # weaker echoes are stored as 0 (no echo); keeps cell edges inside their 4-sigma boxes

__all__ = ["generate", "radar_day", "radar_disc", "radar_mask", "NOISE_THRESHOLD", "MIN_ECHO_DBZ"]


def radar_day(
    rng: np.random.Generator,
    frames: int,
    size: int = 480,
    cells_at_start: int = 4,
    births_per_frame: float = 0.15,
    clutter: float = 2e-4,
) -> np.ndarray:
    """``(frames, size, size)`` uint8 radar frames of one synthetic day (module docstring)."""
    speed = rng.uniform(0.002, 0.01) * size  # pixels per frame
    angle = rng.uniform(0, 2 * math.pi)
    wind = np.array([math.cos(angle), math.sin(angle)]) * speed
    cells: list[dict] = []

    def new_cell(age: float) -> dict:
        life = rng.uniform(20, 80)
        return dict(
            pos=rng.uniform(-0.1, 1.1, size=2) * size,
            vel=wind + rng.normal(0, 0.3 * speed + 0.05, size=2),
            peak=rng.uniform(30, 62),
            sigma=rng.uniform(0.02, 0.07) * size,
            life=life,
            age=age * life,
        )

    for _ in range(cells_at_start):
        cells.append(new_cell(rng.uniform(0, 0.7)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((frames, size, size), dtype=np.uint8)
    for t in range(frames):
        for _ in range(rng.poisson(births_per_frame)):
            cells.append(new_cell(0.0))
        dbz = np.zeros((size, size), dtype=np.float32)
        for c in cells:
            env = math.sin(math.pi * min(max(c["age"] / c["life"], 0.0), 1.0))
            if env <= 0:
                continue
            sigma = c["sigma"] * (0.5 + 0.5 * env)
            r = 4 * sigma
            x0, y0 = c["pos"]
            xs = slice(max(int(x0 - r), 0), min(int(x0 + r) + 1, size))
            ys = slice(max(int(y0 - r), 0), min(int(y0 + r) + 1, size))
            if xs.start >= xs.stop or ys.start >= ys.stop:
                continue
            d2 = (xx[ys, xs] - x0) ** 2 + (yy[ys, xs] - y0) ** 2
            np.maximum(dbz[ys, xs], c["peak"] * env * np.exp(-d2 / (2 * sigma * sigma)), out=dbz[ys, xs])
        pix = np.where(dbz >= MIN_ECHO_DBZ, np.rint(255.0 * (dbz + 10.0) / 70.0), 0.0)
        noise = rng.random((size, size)) < clutter
        pix[noise & (pix == 0)] = rng.integers(1, NOISE_THRESHOLD, size=int((noise & (pix == 0)).sum()))
        out[t] = np.clip(pix, 0, 255).astype(np.uint8)
        for c in cells:
            c["pos"] = c["pos"] + c["vel"]
            c["age"] += 1.0
        cells = [c for c in cells if c["age"] < c["life"]]
    return out


def radar_disc(size: int) -> np.ndarray:
    """``(size, size)`` bool: inside the radar range (a disc of radius ``size / 2``)."""
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2.0
    return (xx - c) ** 2 + (yy - c) ** 2 <= (size / 2.0) ** 2


def radar_mask(frame: np.ndarray) -> np.ndarray:
    """The benchmark's mask of one uint8 frame: inside the radar disc and not weak noise."""
    noise = (frame > 0) & (frame < NOISE_THRESHOLD)
    return radar_disc(frame.shape[-1]) & ~noise


def generate(
    root: Union[str, Path],
    days: Sequence[int] = (6, 2, 2),
    frames_per_day: int = 120,
    size: int = 480,
    seed: int = 0,
    start: str = "2009-03-01",
    drop_prob: float = 0.01,
) -> Path:
    """Write ``days = (train, valid, test)`` synthetic rainy days under ``root`` in the HKO-7
    layout: ``radarPNG/``, ``radarPNG_mask/``, ``pd/hko7_rainy_<split>.pkl``, ``mask_dat.npz``.

    Days are consecutive calendar dates from ``start`` (train, then valid, then test);
    ``size`` is the frame side (480 for the real format; tests use smaller frames with
    ``HKO7DataModule(raw_size=size)``). Deterministic given ``seed``. Returns ``root``.

    Example:
        >>> import tempfile
        >>> from memel_lightning.data.hko7 import read_frame_list
        >>> root = generate(tempfile.mkdtemp(), days=(1, 1, 1), frames_per_day=5, size=32, drop_prob=0.0)
        >>> len(read_frame_list(root / "pd" / "hko7_rainy_train.pkl"))
        5
    """
    import pandas as pd
    from PIL import Image

    if len(days) != 3:
        raise ValueError(f"days must be (train, valid, test) counts, got {tuple(days)}")
    if not 1 <= frames_per_day <= 240:
        raise ValueError(f"frames_per_day must be in [1, 240] (6-minute frames in a day), got {frames_per_day}")
    root = Path(root)
    png_dir, mask_dir, pd_dir = root / "radarPNG", root / "radarPNG_mask", root / "pd"
    pd_dir.mkdir(parents=True, exist_ok=True)
    outside = (~radar_disc(size)).astype(np.uint8)
    static = {"exclude_mask": outside, "outlier_mask": np.zeros_like(outside), "out_boundary_mask": outside}
    np.savez_compressed(root / "mask_dat.npz", **{k: static[k] for k in STATIC_MASK_KEYS})
    rng = np.random.default_rng(seed)
    day = pd.Timestamp(start)
    for split, n_days in zip(SPLITS, days):
        listed = []
        for _ in range(int(n_days)):
            frames = radar_day(rng, frames_per_day, size)
            keep = rng.random(frames_per_day) >= drop_prob
            for t in np.nonzero(keep)[0]:
                ts = day + pd.Timedelta(minutes=6 * int(t))
                path = frame_path(png_dir, ts)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frames[t], mode="L").save(path, compress_level=1)
                write_mask(radar_mask(frames[t]), mask_path(mask_dir, ts))
                listed.append(ts)
            day = day + pd.Timedelta(days=1)
        index = pd.DatetimeIndex(listed, name="datetime")
        pd.DataFrame({"rainy": np.ones(len(index), dtype=bool)}, index=index).to_pickle(pd_dir / DEFAULT_FRAME_LISTS[split])
    return root
