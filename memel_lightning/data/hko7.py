"""HKO-7 radar sequences for nowcasting (Shi et al. 2017) as a LightningDataModule.

The files and their layout are read by :mod:`memel_lightning.data.hko7_files`; this
module picks sequences, turns frames into tensors (the whole frame area-resized, or the
MEmeL authors' central window at native resolution) and batches them.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .hko7_files import (  # noqa: F401  (re-exported: the layout's public names)
    DEFAULT_FRAME_LISTS,
    SPLITS,
    STATIC_MASK_KEYS,
    PathLike,
    frame_path,
    mask_path,
    read_frame,
    read_frame_list,
    read_mask,
    read_static_mask,
    write_mask,
)
from .samplers import EpochSeededSampler, ResumableDataLoader

# The MEmeL authors' window: rows 224 -/+ S/2, columns 235 -/+ S/2 of the 480x480 frame
# ("120*120 central areas for Hong Kong, covering all the land areas"): 164:284, 175:295.
CENTRAL_CENTER = (224, 235)
EVAL_STARTS = ("gapfree", "timeline")


def central_window(raw_size: int, size: int) -> tuple[slice, slice]:
    """Rows and columns of the authors' central ``size x size`` window of a ``raw_size``
    frame (centre (224, 235) at 480, scaled for other sizes).

    Example:
        >>> central_window(480, 120)
        (slice(164, 284, None), slice(175, 295, None))
    """
    r = round(CENTRAL_CENTER[0] * raw_size / 480) - size // 2
    c = round(CENTRAL_CENTER[1] * raw_size / 480) - size // 2
    if r < 0 or c < 0 or r + size > raw_size or c + size > raw_size:
        raise ValueError(f"crop 'central': a {size}x{size} window does not fit a {raw_size}x{raw_size} frame")
    return slice(r, r + size), slice(c, c + size)


def consecutive_starts(index: Any, length: int, interval_minutes: int = 6) -> np.ndarray:
    """Positions ``i`` of ``index`` (sorted, unique) where ``index[i : i + length]`` are
    ``length`` frames exactly ``interval_minutes`` apart: sequences without gaps."""
    n = len(index)
    if n < length:
        return np.zeros(0, dtype=np.int64)
    minutes = np.asarray(index.values.astype("datetime64[m]").astype(np.int64))  # any pandas time unit
    span = minutes[length - 1 :] - minutes[: n - length + 1]
    return np.nonzero(span == (length - 1) * interval_minutes)[0]


def timeline_starts(index: Any, length: int, stride: int, interval_minutes: int = 6) -> np.ndarray:
    """Start positions of the authors' (and the HKO-7 benchmark's) sequential walk: from the
    first listed frame, take the sequence at time ``t`` when all its ``length`` frames are
    listed, then move to ``t + stride * interval``; when the sequence at ``t`` has a gap
    (or ``t`` is not listed), move to the next listed frame after ``t``.

    Example:
        >>> import pandas as pd
        >>> times = pd.date_range("2009-03-01", periods=12, freq="6min").delete([7])
        >>> timeline_starts(times, length=3, stride=2).tolist()   # 00:36 spans the gap: next listed is 00:48
        [0, 2, 4, 7]
    """
    n = len(index)
    ok = np.zeros(n, dtype=bool)
    ok[consecutive_starts(index, length, interval_minutes)] = True
    minutes = np.asarray(index.values.astype("datetime64[m]").astype(np.int64))
    out, pos = [], 0
    while pos < n:
        if ok[pos]:
            out.append(pos)
            pos = int(np.searchsorted(minutes, minutes[pos] + stride * interval_minutes, side="left"))
        else:
            pos += 1
    return np.asarray(out, dtype=np.int64)


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
    S, S) bool}`` with pixel values in [0, 1] (``S = frame_size``). A frame is either the
    whole ``raw_size`` frame area-resized to ``S`` (``crop=None``) or its central ``S x S``
    window at native resolution (``crop="central"``, :func:`central_window`). The mask is
    the per-frame ``.mask`` file (when ``mask_dir``), and-ed with ``static_mask`` (a
    ``(raw_size, raw_size)`` bool array of usable pixels, when given), then cropped or
    resized like the frame. ``cache`` keeps every prepared frame and mask in memory after
    its first read (float32: for small sets).
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
        crop: Optional[str] = None,
        static_mask: Optional[np.ndarray] = None,
    ) -> None:
        self.times = times
        self.starts = np.asarray(starts, dtype=np.int64)
        self.png_dir = Path(png_dir)
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        self.in_frames, self.out_frames = int(in_frames), int(out_frames)
        self.frame_size, self.raw_size = int(frame_size), int(raw_size)
        self.window = central_window(self.raw_size, self.frame_size) if crop == "central" else None
        self.static_mask = None if static_mask is None else torch.from_numpy(np.asarray(static_mask, dtype=bool).copy())
        self.cache: Optional[dict[int, tuple[Tensor, Tensor]]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.starts)

    def start_time(self, i: int) -> Any:
        return self.times[int(self.starts[i])]

    def _shape(self, image: Tensor, is_mask: bool) -> Tensor:
        if self.window is not None:
            return image[self.window]
        if is_mask:
            return resize_mask(image[None], self.frame_size)[0]
        return resize_frames(image[None], self.frame_size)[0]

    def _load(self, pos: int) -> tuple[Tensor, Tensor]:
        if self.cache is not None and pos in self.cache:
            return self.cache[pos]
        ts = self.times[pos]
        frame = torch.from_numpy(read_frame(frame_path(self.png_dir, ts), self.raw_size)).float().div_(255.0)
        mask = torch.ones(self.raw_size, self.raw_size, dtype=torch.bool)
        if self.mask_dir is not None:
            mask &= torch.from_numpy(read_mask(mask_path(self.mask_dir, ts), self.raw_size).copy())
        if self.static_mask is not None:
            mask &= self.static_mask
        out = (self._shape(frame, False).contiguous(), self._shape(mask, True).contiguous())
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
    """HKO-7 radar sequences for nowcasting, read from the release's on-disk layout.

    ``root`` holds ``radarPNG/``, ``radarPNG_mask/`` and ``pd/``
    (:mod:`~memel_lightning.data.hko7_files`); ``png_dir``/``mask_dir``/``pd_dir`` override
    those folders and ``frame_lists`` the pickle names per split (``train``, ``valid``,
    ``test``; pickles of any pandas version, the release's pandas 0.19 ones included). A
    sequence is ``in_frames + out_frames`` frames exactly ``interval_minutes`` apart, all
    in the split's frame list; sequences with a gap are skipped. Training uses every
    ``train_stride``-th gap-free start. Valid/test starts: ``eval_starts="gapfree"`` takes
    every ``eval_stride``-th gap-free start; ``"timeline"`` walks the clock as the HKO-7
    benchmark and the MEmeL authors do (:func:`timeline_starts`). ``eval_drop_last`` drops
    a last incomplete evaluation batch (the authors' iterator stops there).

    Frames (``raw_size`` square, 480): ``crop=None`` area-resizes the whole frame to
    ``frame_size`` (masks keep a pixel when >= half its area is valid); ``crop="central"``
    takes the MEmeL authors' ``frame_size`` window at native resolution (rows 164:284,
    columns 175:295 for 120 of 480). Masks: the per-frame ``.mask`` files when
    ``use_mask``, and-ed with the static masks of ``static_mask`` (the release's
    ``mask_dat.npz``, relative to ``root`` unless absolute) when given: pixels marked in
    any of ``static_mask_keys`` are excluded (the authors: ``exclude_mask`` alone).

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
        crop: Optional[str] = None,
        interval_minutes: int = 6,
        use_mask: bool = True,
        static_mask: Optional[str] = None,
        static_mask_keys: Sequence[str] = ("exclude_mask",),
        batch_first: bool = False,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        train_stride: int = 1,
        eval_stride: int = 5,
        eval_starts: str = "gapfree",
        eval_drop_last: bool = False,
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
        if crop not in (None, "central"):
            raise ValueError(f"crop must be null (resize the whole frame) or 'central', got {crop!r}")
        if crop == "central":
            central_window(raw_size, frame_size)  # fits?
        if eval_starts not in EVAL_STARTS:
            raise ValueError(f"eval_starts must be one of {EVAL_STARTS}, got {eval_starts!r}")
        bad_keys = [k for k in static_mask_keys if k not in STATIC_MASK_KEYS]
        if bad_keys:
            raise ValueError(f"static_mask_keys must be among {STATIC_MASK_KEYS}, got {bad_keys}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.png_dir = Path(png_dir).expanduser() if png_dir else self.root / "radarPNG"
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else self.root / "radarPNG_mask"
        self.pd_dir = Path(pd_dir).expanduser() if pd_dir else self.root / "pd"
        self.static_mask_path = None if static_mask is None else self.root / Path(static_mask).expanduser()
        self.static_mask_keys = tuple(static_mask_keys)
        self.frame_lists = dict(DEFAULT_FRAME_LISTS, **(frame_lists or {}))
        self.in_frames, self.out_frames = int(in_frames), int(out_frames)
        self.frame_size, self.raw_size = int(frame_size), int(raw_size)
        self.crop = crop
        self.interval_minutes = int(interval_minutes)
        self.use_mask = use_mask
        self.batch_first = batch_first
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.strides = {"train": int(train_stride), "valid": int(eval_stride), "test": int(eval_stride)}
        self.eval_starts = eval_starts
        self.eval_drop_last = eval_drop_last
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

    def _starts(self, split: str, times: Any, length: int) -> np.ndarray:
        if split != "train" and self.eval_starts == "timeline":
            return timeline_starts(times, length, self.strides[split], self.interval_minutes)
        return consecutive_starts(times, length, self.interval_minutes)[:: self.strides[split]]

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
        starts = self._starts(split, times, length)
        if len(starts) == 0:
            raise ValueError(
                f"HKO-7 frame list {list_path} has no gap-free run of {length} frames {self.interval_minutes} min apart"
            )
        mask_dir = self.mask_dir if self.use_mask else None
        static = None
        if self.static_mask_path is not None:
            static = read_static_mask(self.static_mask_path, self.static_mask_keys, self.raw_size)
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
            cache=self.cache, crop=self.crop, static_mask=static,
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
            drop_last=(train and len(data) >= self.batch_size) or (not train and self.eval_drop_last and len(data) >= self.eval_batch_size),
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
