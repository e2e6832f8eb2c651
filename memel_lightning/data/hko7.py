"""The HKO-7 radar-echo data set (Shi et al. 2017) in its on-disk layout.

Layout (as the HKO-7 benchmark code, ``sxjscience/HKO-7``, reads it)::

    <root>/radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png       8-bit grey, 480x480, yy = year - 2000
    <root>/radarPNG_mask/YYYY/MM/DD/RADyymmddHHMM00.mask zlib-compressed numpy bool (480, 480),
                                                         true = pixel is used
    <root>/pd/hko7_rainy_train.pkl                       pandas pickles whose DatetimeIndex is
    <root>/pd/hko7_rainy_valid.pkl                       the split's frame list (one row per
    <root>/pd/hko7_rainy_test.pkl                        6-minute frame)

A ``.mask`` file is ``zlib.compress(mask.tobytes())`` of a C-ordered ``bool`` array, as
the benchmark's ``nowcasting/mask.py`` writes it. Pixel values map to reflectivity by
``dBZ = 70 p / 255 - 10`` (SPEC section 9).
"""
from __future__ import annotations

import json
import os
import zlib
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .samplers import EpochSeededSampler, ResumableDataLoader

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "valid", "test")
DEFAULT_FRAME_LISTS = {split: f"hko7_rainy_{split}.pkl" for split in SPLITS}


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


def read_frame_list(path: PathLike) -> "Any":
    """The sorted, unique ``pandas.DatetimeIndex`` of a frame-list pickle (DataFrame,
    Series or DatetimeIndex)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HKO-7 frame list {path} does not exist")
    obj = pd.read_pickle(path)
    index = obj if isinstance(obj, pd.Index) else getattr(obj, "index", None)
    if not isinstance(index, pd.DatetimeIndex):
        raise ValueError(
            f"HKO-7 frame list {path} must be a pandas DataFrame/Series indexed by datetimes, got {type(obj).__name__}"
            + ("" if index is None else f" with a {type(index).__name__}")
        )
    return index.unique().sort_values()


def consecutive_starts(index: Any, length: int, interval_minutes: int = 6) -> np.ndarray:
    """Positions ``i`` of ``index`` (sorted, unique) where ``index[i : i + length]`` are
    ``length`` frames exactly ``interval_minutes`` apart: sequences without gaps."""
    n = len(index)
    if n < length:
        return np.zeros(0, dtype=np.int64)
    minutes = np.asarray(index.values.astype("datetime64[m]").astype(np.int64))  # any pandas time unit
    span = minutes[length - 1 :] - minutes[: n - length + 1]
    return np.nonzero(span == (length - 1) * interval_minutes)[0]


def resize_frames(frames: Tensor, size: int) -> Tensor:
    """``(N, H, W)`` float frames -> ``(N, size, size)`` by area averaging (identity if equal)."""
    if frames.shape[-1] == size and frames.shape[-2] == size:
        return frames
    return F.interpolate(frames.unsqueeze(1), size=(size, size), mode="area").squeeze(1)


def resize_mask(mask: Tensor, size: int) -> Tensor:
    """``(N, H, W)`` bool -> ``(N, size, size)``: a pixel is valid when at least half of the
    source pixels it covers are valid (area fraction >= 0.5)."""
    if mask.shape[-1] == size and mask.shape[-2] == size:
        return mask
    return resize_frames(mask.float(), size) >= 0.5


class HKO7Sequences(Dataset):
    """Sequences of ``in_frames + out_frames`` consecutive frames of one split.

    Item ``i``: ``{"inputs": (T_in, 1, S, S), "targets": (T_out, 1, S, S), "mask": (T_out, 1,
    S, S) bool}`` with pixel values in [0, 1] (``S = frame_size``). ``cache`` keeps every
    resized frame and mask in memory after its first read (float32: for small sets).
    """

    def __init__(
        self,
        times: Any,
        starts: np.ndarray,
        png_dir: PathLike,
        mask_dir: Optional[PathLike],
        in_frames: int,
        out_frames: int,
        frame_size: int,
        raw_size: int,
        cache: bool = False,
    ) -> None:
        self.times = times
        self.starts = np.asarray(starts, dtype=np.int64)
        self.png_dir = Path(png_dir)
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        self.in_frames, self.out_frames = int(in_frames), int(out_frames)
        self.frame_size, self.raw_size = int(frame_size), int(raw_size)
        self.cache: Optional[dict[int, tuple[Tensor, Tensor]]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.starts)

    def start_time(self, i: int) -> Any:
        return self.times[int(self.starts[i])]

    def _load(self, pos: int) -> tuple[Tensor, Tensor]:
        if self.cache is not None and pos in self.cache:
            return self.cache[pos]
        ts = self.times[pos]
        frame = torch.from_numpy(read_frame(frame_path(self.png_dir, ts), self.raw_size)).float().div_(255.0)
        if self.mask_dir is None:
            mask = torch.ones(self.raw_size, self.raw_size, dtype=torch.bool)
        else:
            mask = torch.from_numpy(read_mask(mask_path(self.mask_dir, ts), self.raw_size).copy())
        out = (resize_frames(frame[None], self.frame_size)[0], resize_mask(mask[None], self.frame_size)[0])
        if self.cache is not None:
            self.cache[pos] = out
        return out

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        start = int(self.starts[i])
        loaded = [self._load(start + k) for k in range(self.in_frames + self.out_frames)]
        frames = torch.stack([f for f, _ in loaded]).unsqueeze(1)
        masks = torch.stack([m for _, m in loaded]).unsqueeze(1)
        t = self.in_frames
        return {"inputs": frames[:t], "targets": frames[t:], "mask": masks[t:]}


def collate_sequences(items: list[dict[str, Tensor]], batch_first: bool = False) -> dict[str, Tensor]:
    """Stack items to ``(B, T, ...)``, then to time-first ``(T, B, ...)`` unless ``batch_first``."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    if not batch_first:
        out = {k: v.transpose(0, 1).contiguous() for k, v in out.items()}
    return out


class HKO7DataModule(pl.LightningDataModule):
    """HKO-7 radar sequences for nowcasting, read from the benchmark's on-disk layout.

    ``root`` holds ``radarPNG/``, ``radarPNG_mask/`` and ``pd/`` (module docstring);
    ``png_dir``/``mask_dir``/``pd_dir`` override those folders and ``frame_lists`` the
    pickle names per split (``train``, ``valid``, ``test``). A sequence is ``in_frames +
    out_frames`` frames exactly ``interval_minutes`` apart, all in the split's frame list;
    sequences with a gap are skipped. Every ``train_stride``-th (``eval_stride``-th for
    valid/test) gap-free start is used. Frames (``raw_size`` square, 480) are resized to
    ``frame_size`` by area averaging; masks keep a pixel when >= half its area is valid.

    Batches: ``{"inputs", "targets", "mask"}``, time-first ``(T, B, 1, S, S)`` by default,
    ``(B, T, 1, S, S)`` with ``batch_first`` (match the model's flag).

    ``synthetic``: keyword arguments of
    :func:`memel_lightning.data.synthetic_radar.generate`; when given, ``prepare_data``
    writes a synthetic data set in this layout under ``root`` if it is not there yet (a
    ``SYNTHETIC.json`` records the arguments; other arguments for an existing folder are
    an error). Set up fails on a missing folder or pickle, a frame list naming a missing
    PNG or mask, or a frame of the wrong size, with a message naming the file.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> dm = HKO7DataModule(root, in_frames=3, out_frames=2, frame_size=24, raw_size=48, batch_size=2,
        ...                     synthetic=dict(days=(1, 1, 1), frames_per_day=12, size=48))
        >>> dm.prepare_data(); dm.setup("fit")
        >>> {k: tuple(v.shape) for k, v in next(iter(dm.train_dataloader())).items()}
        {'inputs': (3, 2, 1, 24, 24), 'targets': (2, 2, 1, 24, 24), 'mask': (2, 2, 1, 24, 24)}
    """

    def __init__(
        self,
        root: str = "hko_data",
        png_dir: Optional[str] = None,
        mask_dir: Optional[str] = None,
        pd_dir: Optional[str] = None,
        frame_lists: Optional[Mapping[str, str]] = None,
        in_frames: int = 10,
        out_frames: int = 10,
        frame_size: int = 120,
        raw_size: int = 480,
        interval_minutes: int = 6,
        use_mask: bool = True,
        batch_first: bool = False,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        train_stride: int = 1,
        eval_stride: int = 5,
        cache: bool = False,
        check_files: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        synthetic: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if in_frames < 1 or out_frames < 1:
            raise ValueError(f"need in_frames, out_frames >= 1, got {in_frames}, {out_frames}")
        if train_stride < 1 or eval_stride < 1:
            raise ValueError(f"strides must be >= 1, got train_stride={train_stride}, eval_stride={eval_stride}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.png_dir = Path(png_dir).expanduser() if png_dir else self.root / "radarPNG"
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else self.root / "radarPNG_mask"
        self.pd_dir = Path(pd_dir).expanduser() if pd_dir else self.root / "pd"
        self.frame_lists = dict(DEFAULT_FRAME_LISTS, **(frame_lists or {}))
        self.in_frames, self.out_frames = int(in_frames), int(out_frames)
        self.frame_size, self.raw_size = int(frame_size), int(raw_size)
        self.interval_minutes = int(interval_minutes)
        self.use_mask = use_mask
        self.batch_first = batch_first
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.strides = {"train": int(train_stride), "valid": int(eval_stride), "test": int(eval_stride)}
        self.cache = cache
        self.check_files = check_files
        self.seed = seed
        self.num_workers = num_workers
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.datasets: dict[str, HKO7Sequences] = {}

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> None:
        if self.synthetic is None:
            return
        from .synthetic_radar import generate

        marker = self.root / "SYNTHETIC.json"
        wanted = json.loads(json.dumps(self.synthetic))
        if marker.is_file():
            found = json.loads(marker.read_text())
            if found != wanted:
                raise ValueError(
                    f"{self.root} holds a synthetic data set generated with {found}, not {wanted}; "
                    "delete the folder or point root elsewhere"
                )
            return
        generate(self.root, **self.synthetic)
        marker.write_text(json.dumps(wanted, sort_keys=True))

    def build(self, split: str) -> HKO7Sequences:
        """The :class:`HKO7Sequences` of ``split`` (``train``, ``valid`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        for folder in (self.png_dir,) + ((self.mask_dir,) if self.use_mask else ()):
            if not folder.is_dir():
                raise FileNotFoundError(f"HKO-7 folder {folder} does not exist (root={self.root})")
        list_path = self.pd_dir / self.frame_lists[split]
        times = read_frame_list(list_path)
        length = self.in_frames + self.out_frames
        starts = consecutive_starts(times, length, self.interval_minutes)[:: self.strides[split]]
        if len(starts) == 0:
            raise ValueError(
                f"HKO-7 frame list {list_path} has no gap-free run of {length} frames {self.interval_minutes} min apart"
            )
        mask_dir = self.mask_dir if self.use_mask else None
        if self.check_files:
            used = np.unique((starts[:, None] + np.arange(length)[None, :]).reshape(-1))
            for pos in used:
                ts = times[int(pos)]
                for path in (frame_path(self.png_dir, ts),) + ((mask_path(mask_dir, ts),) if mask_dir else ()):
                    if not path.is_file():
                        raise FileNotFoundError(f"HKO-7 frame list {list_path} names {ts}, but {path} does not exist")
            read_frame(frame_path(self.png_dir, times[int(starts[0])]), self.raw_size)  # size check, early
        return HKO7Sequences(
            times, starts, self.png_dir, mask_dir, self.in_frames, self.out_frames, self.frame_size, self.raw_size,
            cache=self.cache,
        )

    def setup(self, stage: Optional[str] = None) -> None:
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, SPLITS) if stage else SPLITS:
            if split not in self.datasets:
                self.datasets[split] = self.build(split)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self.build(split)
        data = self.datasets[split]
        return (ResumableDataLoader if train else DataLoader)(
            data,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochSeededSampler(data, seed=self.seed) if train else None,
            num_workers=self.num_workers,
            collate_fn=partial(collate_sequences, batch_first=self.batch_first),
            drop_last=train and len(data) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
