"""The HKO-7 release's own files: pandas 0.19 frame lists, static masks, the authors' crop
and test starts. ``fixtures/hko7_rainy_valid.pkl`` is the release's validation frame list
(published with the HKO-7 benchmark tools), byte for byte."""
import hashlib
import pickletools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from memel_lightning.data import HKO7DataModule
from memel_lightning.data.hko7 import (
    central_window,
    consecutive_starts,
    frame_path,
    read_frame_list,
    timeline_starts,
    write_mask,
)
from memel_lightning.data.hko7_files import read_static_mask
from memel_lightning.data.pandas_pickle import LegacyPickleError, read_datetime_index

RELEASE_LIST = Path(__file__).parent / "fixtures" / "hko7_rainy_valid.pkl"


def _raw_datetimes(path: Path) -> np.ndarray:
    """The DatetimeIndex values as pandas 0.19 wrote them: the one BINSTRING after the
    ``M8`` dtype, read as little-endian int64 nanoseconds (independent of any unpickler)."""
    ops = list(pickletools.genops(path.read_bytes()))
    seen_m8 = False
    for op, arg, _ in ops:
        if op.name == "SHORT_BINSTRING" and arg == "M8":
            seen_m8 = True
        if seen_m8 and op.name == "BINSTRING":
            return np.frombuffer(arg.encode("latin1"), dtype="<i8")
    raise AssertionError("no datetime64 payload in the pickle")


def test_release_frame_list_fails_with_plain_pandas():
    # the reason for the restricted unpickler; if pandas ever reads it again, fine too
    try:
        pd.read_pickle(RELEASE_LIST)
    except ModuleNotFoundError as exc:
        assert "pandas.indexes" in str(exc)


def test_release_frame_list_loads_to_the_written_datetimes():
    before = hashlib.sha256(RELEASE_LIST.read_bytes()).hexdigest()
    listing = sorted(p.name for p in RELEASE_LIST.parent.iterdir())
    index = read_datetime_index(RELEASE_LIST)
    raw = _raw_datetimes(RELEASE_LIST)
    assert isinstance(index, pd.DatetimeIndex) and index.tz is None
    np.testing.assert_array_equal(index.values.astype("datetime64[ns]").astype(np.int64), raw)
    assert len(index) == 11736
    assert str(index[0]) == "2009-03-01 00:00:00" and str(index[-1]) == "2014-11-29 23:54:00"
    assert index.is_monotonic_increasing and index.is_unique
    assert (index.minute % 6 == 0).all() and (index.second == 0).all()
    assert len(np.unique(index.date)) == 49  # rainy days of the validation split
    # read_frame_list: same datetimes (already sorted and unique); nothing written beside the file
    assert read_frame_list(RELEASE_LIST).equals(index)
    assert hashlib.sha256(RELEASE_LIST.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in RELEASE_LIST.parent.iterdir()) == listing


def test_modern_pickles_and_bad_files(tmp_path):
    times = pd.to_datetime(["2010-05-01 00:06", "2010-05-01 00:00"])
    pd.DataFrame({"x": [1, 2]}, index=times).to_pickle(tmp_path / "df.pkl")
    pd.Series([1, 2], index=times).to_pickle(tmp_path / "s.pkl")
    pd.to_pickle(times, tmp_path / "idx.pkl")
    for name in ("df.pkl", "s.pkl", "idx.pkl"):
        assert list(read_datetime_index(tmp_path / name)) == list(times)
    assert list(read_frame_list(tmp_path / "df.pkl")) == sorted(times)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(LegacyPickleError, match="junk.pkl cannot be read"):
        read_frame_list(tmp_path / "junk.pkl")
    pd.DataFrame({"x": [1]}).to_pickle(tmp_path / "range.pkl")
    with pytest.raises(LegacyPickleError, match="range.pkl must be a DataFrame/Series indexed by datetimes"):
        read_frame_list(tmp_path / "range.pkl")
    pd.DataFrame({"x": [1]}, index=times[:1].tz_localize("Asia/Hong_Kong")).to_pickle(tmp_path / "tz.pkl")
    with pytest.raises(ValueError, match="tz.pkl has timezone-aware"):
        read_frame_list(tmp_path / "tz.pkl")


def test_static_mask_semantics(tmp_path):
    rng = np.random.default_rng(0)
    masks = {k: (rng.random((480, 480)) < 0.1).astype(np.uint8) for k in ("exclude_mask", "outlier_mask", "out_boundary_mask")}
    np.savez(tmp_path / "mask_dat.npz", **masks)
    np.testing.assert_array_equal(read_static_mask(tmp_path / "mask_dat.npz"), masks["exclude_mask"] == 0)
    both = read_static_mask(tmp_path / "mask_dat.npz", ("exclude_mask", "outlier_mask"))
    np.testing.assert_array_equal(both, (masks["exclude_mask"] == 0) & (masks["outlier_mask"] == 0))
    with pytest.raises(ValueError, match="mask_dat.npz has no array 'nope'"):
        read_static_mask(tmp_path / "mask_dat.npz", ("nope",))
    np.savez(tmp_path / "small.npz", exclude_mask=np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"small.npz: exclude_mask is \(10, 10\), expected \(480, 480\)"):
        read_static_mask(tmp_path / "small.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        read_static_mask(tmp_path / "missing.npz")


def _authors_walk(times: pd.DatetimeIndex, length: int, stride: int) -> list:
    """The HKO-7 iterator's "sequent" mode, transcribed: clip = date_range(t, length, 6min);
    valid when every frame is listed; then t += stride * 6min, else t = next listed after t."""
    listed, out, t, step = set(times), [], times[0], pd.Timedelta(minutes=6)
    while t <= times[-1]:
        clip = pd.date_range(t, periods=length, freq="6min")
        if all(c in listed for c in clip):
            out.append(t)
            t = t + stride * step
        else:
            later = times[times > t]
            if len(later) == 0:
                break
            t = later[0]
    return out


def test_timeline_starts_match_the_authors_walk():
    rng = np.random.default_rng(1)
    full = pd.date_range("2009-03-01", periods=400, freq="6min")
    times = full[rng.random(400) > 0.04]
    starts = timeline_starts(times, length=20, stride=5)
    assert [times[i] for i in starts] == _authors_walk(times, 20, 5)
    gapfree = set(consecutive_starts(times, 20).tolist())
    assert set(starts.tolist()) <= gapfree and len(starts) > 5


def _write_frame(root: Path, ts, png: np.ndarray, mask: np.ndarray) -> None:
    path = frame_path(root / "radarPNG", ts)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(png, mode="L").save(path)
    write_mask(mask, root / "radarPNG_mask" / path.parent.relative_to(root / "radarPNG") / (path.stem + ".mask"))


def test_central_crop_is_exact_at_native_resolution(tmp_path):
    assert central_window(480, 120) == (slice(164, 284), slice(175, 295))
    rng = np.random.default_rng(2)
    times = pd.date_range("2012-06-01 10:00", periods=4, freq="6min")
    pngs = [rng.integers(0, 256, (480, 480), dtype=np.uint8) for _ in times]
    frame_masks = [rng.random((480, 480)) < 0.9 for _ in times]
    for ts, png, m in zip(times, pngs, frame_masks):
        _write_frame(tmp_path, ts, png, m)
    (tmp_path / "pd").mkdir()
    for split in ("train", "valid", "test"):
        pd.DataFrame({"rain": np.ones(len(times), bool)}, index=times).to_pickle(tmp_path / "pd" / f"hko7_rainy_{split}.pkl")
    exclude = (rng.random((480, 480)) < 0.2).astype(np.uint8)
    np.savez(tmp_path / "mask_dat.npz", exclude_mask=exclude, outlier_mask=0 * exclude, out_boundary_mask=0 * exclude)

    dm = HKO7DataModule(str(tmp_path), in_frames=2, out_frames=2, frame_size=120, crop="central", batch_size=1,
                        static_mask="mask_dat.npz", use_mask=False, eval_stride=1)
    item = dm.build("test")[0]
    rows, cols = slice(164, 284), slice(175, 295)
    for k in range(2):
        assert torch.equal(item["inputs"][k, 0], torch.from_numpy(pngs[k][rows, cols] / 255).float())
        assert torch.equal(item["targets"][k, 0], torch.from_numpy(pngs[2 + k][rows, cols] / 255).float())
        assert torch.equal(item["mask"][k, 0], torch.from_numpy(exclude[rows, cols] == 0))
    # static and per-frame masks together
    dm2 = HKO7DataModule(str(tmp_path), in_frames=2, out_frames=2, frame_size=120, crop="central", batch_size=1,
                         static_mask="mask_dat.npz", use_mask=True, eval_stride=1)
    item2 = dm2.build("test")[0]
    assert torch.equal(item2["mask"][1, 0], torch.from_numpy((exclude[rows, cols] == 0) & frame_masks[3][rows, cols]))
    # resize (today's default) still area-averages the whole frame
    dm3 = HKO7DataModule(str(tmp_path), in_frames=2, out_frames=2, frame_size=120, batch_size=1, eval_stride=1)
    want = pngs[0].astype(np.float64).reshape(120, 4, 120, 4).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(dm3.build("test")[0]["inputs"][0, 0].numpy(), want, rtol=0, atol=1e-6)


def test_crop_and_mask_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="crop must be null .* or 'central', got 'middle'"):
        HKO7DataModule(str(tmp_path), crop="middle")
    with pytest.raises(ValueError, match="crop 'central': a 460x460 window does not fit a 480x480 frame"):
        HKO7DataModule(str(tmp_path), crop="central", frame_size=460)
    with pytest.raises(ValueError, match="static_mask_keys must be among"):
        HKO7DataModule(str(tmp_path), static_mask="mask_dat.npz", static_mask_keys=["exclude"])
    with pytest.raises(ValueError, match="eval_starts must be one of"):
        HKO7DataModule(str(tmp_path), eval_starts="random")
