"""The HKO-7 release's files: radar PNGs, per-frame ``.mask`` files, frame-list pickles,
and the static masks ``mask_dat.npz``.

Layout (as the HKO-7 benchmark code, ``sxjscience/HKO-7``, reads it)::

    <root>/radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png       8-bit grey, 480x480, yy = year - 2000
    <root>/radarPNG_mask/YYYY/MM/DD/RADyymmddHHMM00.mask zlib-compressed numpy bool (480, 480),
                                                         true = pixel is used
    <root>/pd/hko7_rainy_{train,valid,test}.pkl          pandas pickles whose DatetimeIndex is
                                                         the split's frame list (6-minute frames)
    <root>/mask_dat.npz                                  static masks, 480x480 uint8, 1 = excluded:
                                                         exclude_mask, outlier_mask, out_boundary_mask

A ``.mask`` file is ``zlib.compress(mask.tobytes())`` of a C-ordered ``bool`` array, as
the benchmark's ``nowcasting/mask.py`` writes it. The release's frame lists were pickled
by pandas 0.19 under Python 2; :func:`read_frame_list` reads them (and newer ones) through
:mod:`memel_lightning.data.pandas_pickle`. Pixel values map to reflectivity by
``dBZ = 70 p / 255 - 10`` (docs/method.md §9).

This module only reads and writes files (no torch, no Lightning): the data module
(:mod:`memel_lightning.data.hko7`) and the synthetic generator
(:mod:`memel_lightning.data.synthetic_radar`) both build on it.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from .pandas_pickle import read_datetime_index

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "valid", "test")
DEFAULT_FRAME_LISTS = {split: f"hko7_rainy_{split}.pkl" for split in SPLITS}
STATIC_MASK_KEYS = ("exclude_mask", "outlier_mask", "out_boundary_mask")


def _stamp(ts: Any) -> str:
    return "RAD%02d%02d%02d%02d%02d00" % (ts.year - 2000, ts.month, ts.day, ts.hour, ts.minute)


def frame_path(png_dir: PathLike, ts: Any) -> Path:
    """``png_dir/YYYY/MM/DD/RADyymmddHHMM00.png`` for timestamp ``ts``."""
    return Path(png_dir) / f"{ts.year:04d}" / f"{ts.month:02d}" / f"{ts.day:02d}" / f"{_stamp(ts)}.png"


def mask_path(mask_dir: PathLike, ts: Any) -> Path:
    """``mask_dir/YYYY/MM/DD/RADyymmddHHMM00.mask`` for timestamp ``ts``."""
    return Path(mask_dir) / f"{ts.year:04d}" / f"{ts.month:02d}" / f"{ts.day:02d}" / f"{_stamp(ts)}.mask"


def write_mask(mask: np.ndarray, path: PathLike) -> None:
    """Write a bool mask as the benchmark does: ``zlib.compress(mask.tobytes(), 2)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zlib.compress(np.ascontiguousarray(mask, dtype=bool).tobytes(), 2))


def read_mask(path: PathLike, size: int = 480) -> np.ndarray:
    """Read a ``.mask`` file into a ``(size, size)`` bool array (true = use the pixel)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HKO-7 mask file {path} does not exist")
    try:
        raw = zlib.decompress(path.read_bytes())
    except zlib.error as exc:
        raise ValueError(f"HKO-7 mask file {path} is not zlib-compressed ({exc})") from None
    if len(raw) != size * size:
        raise ValueError(
            f"HKO-7 mask file {path} holds {len(raw)} values, expected {size}x{size}={size * size} "
            f"(raw_size={size})"
        )
    return np.frombuffer(raw, dtype=bool).reshape(size, size)


def read_frame(path: PathLike, size: int = 480) -> np.ndarray:
    """Read one radar PNG as a ``(size, size)`` uint8 array; the size is checked."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HKO-7 radar frame {path} does not exist")
    with Image.open(path) as img:
        if img.size != (size, size):
            raise ValueError(f"HKO-7 radar frame {path} is {img.size[0]}x{img.size[1]}, expected {size}x{size}")
        if img.mode != "L":
            img = img.convert("L")
        return np.asarray(img, dtype=np.uint8).copy()


def read_frame_list(path: PathLike) -> Any:
    """The sorted, unique ``pandas.DatetimeIndex`` of a frame-list pickle (DataFrame,
    Series or DatetimeIndex) written by any pandas version, the release's pandas 0.19 /
    Python 2 pickles included. Timezone-aware lists are an error (HKO-7 frame times
    are naive local times, and so are the file names built from them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HKO-7 frame list {path} does not exist")
    index = read_datetime_index(path)
    if index.tz is not None:
        raise ValueError(f"HKO-7 frame list {path} has timezone-aware datetimes ({index.tz}); expected naive ones")
    return index.unique().sort_values()


def read_static_mask(path: PathLike, keys: Sequence[str] = ("exclude_mask",), size: int = 480) -> np.ndarray:
    """Pixels to *use* according to the release's static masks: a ``(size, size)`` bool
    array, false where any of ``keys`` in ``mask_dat.npz`` marks the pixel (non-zero =
    excluded; the authors use ``1 - exclude_mask``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HKO-7 static mask file {path} does not exist")
    if not keys:
        raise ValueError(f"HKO-7 static mask file {path}: no mask keys given (choose from {STATIC_MASK_KEYS})")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"HKO-7 static mask file {path} is not a numpy .npz file ({type(exc).__name__}: {exc})") from None
    with data:
        excluded = np.zeros((size, size), dtype=bool)
        for key in keys:
            if key not in data.files:
                raise ValueError(f"HKO-7 static mask file {path} has no array {key!r} (it has {sorted(data.files)})")
            arr = data[key]
            if arr.shape != (size, size):
                raise ValueError(f"HKO-7 static mask file {path}: {key} is {arr.shape}, expected ({size}, {size})")
            excluded |= arr != 0
    return ~excluded
