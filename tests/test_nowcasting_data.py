"""HKO7DataModule on data written by synthetic_radar in the HKO-7 layout."""
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from memel_lightning.data import HKO7DataModule, synthetic_radar
from memel_lightning.data.hko7 import frame_path, mask_path, read_frame_list, read_mask, write_mask

RAW, SIZE, T_IN, T_OUT = 48, 24, 3, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("hko")
    synthetic_radar.generate(path, days=(2, 1, 1), frames_per_day=30, size=RAW, seed=3, drop_prob=0.08)
    return path


def make_dm(root, **kw):
    args = dict(in_frames=T_IN, out_frames=T_OUT, frame_size=SIZE, raw_size=RAW, batch_size=4, eval_stride=2)
    args.update(kw)
    return HKO7DataModule(str(root), **args)


def test_layout_is_the_benchmark_one(root):
    times = read_frame_list(root / "pd" / "hko7_rainy_train.pkl")
    assert isinstance(pd.read_pickle(root / "pd" / "hko7_rainy_valid.pkl"), pd.DataFrame)
    ts = times[0]
    png = root / "radarPNG" / f"{ts.year:04d}" / f"{ts.month:02d}" / f"{ts.day:02d}" / (
        f"RAD{ts.year - 2000:02d}{ts.month:02d}{ts.day:02d}{ts.hour:02d}{ts.minute:02d}00.png")
    assert png == frame_path(root / "radarPNG", ts) and png.is_file()
    with Image.open(png) as img:
        assert img.mode == "L" and img.size == (RAW, RAW)
    # .mask: zlib-compressed numpy bool, read exactly as the benchmark's read_mask_file does
    raw = np.frombuffer(zlib.decompress(mask_path(root / "radarPNG_mask", ts).read_bytes()), dtype=bool)
    assert raw.size == RAW * RAW
    frame = np.asarray(Image.open(png))
    expected = synthetic_radar.radar_mask(frame)
    np.testing.assert_array_equal(raw.reshape(RAW, RAW), expected)
    assert not expected[0, 0] and expected.mean() > 0.6  # corners lie outside the radar disc
    assert not expected[(frame > 0) & (frame < round(0.28 * 255))].any()  # the benchmark's noise filter
    assert (frame > 0).any() and (frame >= 0.6 * 255).any()  # some heavy rain somewhere in the day


def test_mask_roundtrip(tmp_path):
    m = np.random.default_rng(0).random((RAW, RAW)) > 0.5
    write_mask(m, tmp_path / "a.mask")
    np.testing.assert_array_equal(read_mask(tmp_path / "a.mask", RAW), m)
    with pytest.raises(ValueError, match=r"a\.mask.*expected 480x480"):
        read_mask(tmp_path / "a.mask", 480)


def brute_force_starts(times, length):
    """Gap-free starts, checked frame by frame."""
    s = set(times)
    step = pd.Timedelta(minutes=6)
    return [i for i, t in enumerate(times) if all(t + k * step in s for k in range(length))]


@pytest.mark.parametrize("batch_first", [False, True])
def test_loader_values_shapes_and_gaps(root, batch_first):
    dm = make_dm(root, batch_first=batch_first)
    dm.setup("fit")
    train = dm.datasets["train"]
    times = read_frame_list(root / "pd" / "hko7_rainy_train.pkl")
    starts = brute_force_starts(list(times), T_IN + T_OUT)
    assert len(times) < 60  # drop_prob removed frames: there are gaps to skip
    assert train.starts.tolist() == starts
    valid = dm.datasets["valid"]
    v_times = read_frame_list(root / "pd" / "hko7_rainy_valid.pkl")
    assert valid.starts.tolist() == brute_force_starts(list(v_times), T_IN + T_OUT)[::2]

    # values: direct PIL read, 2x2 block mean (area resize), mask kept where >= half valid
    item = train[3]
    start = starts[3]
    for k in range(T_IN + T_OUT):
        ts = times[start + k]
        img = np.asarray(Image.open(frame_path(root / "radarPNG", ts)), dtype=np.float64) / 255.0
        down = img.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3))
        got = item["inputs"][k, 0] if k < T_IN else item["targets"][k - T_IN, 0]
        np.testing.assert_allclose(got.numpy(), down, atol=1e-6)
        if k >= T_IN:
            m = read_mask(mask_path(root / "radarPNG_mask", ts), RAW).astype(np.float64)
            m_down = m.reshape(SIZE, 2, SIZE, 2).mean(axis=(1, 3)) >= 0.5
            np.testing.assert_array_equal(item["mask"][k - T_IN, 0].numpy(), m_down)
    assert item["mask"].dtype == torch.bool

    batch = next(iter(dm.train_dataloader()))
    lead = (4, T_IN) if batch_first else (T_IN, 4)
    assert tuple(batch["inputs"].shape) == lead + (1, SIZE, SIZE)
    out = (4, T_OUT) if batch_first else (T_OUT, 4)
    assert tuple(batch["targets"].shape) == out + (1, SIZE, SIZE)
    assert tuple(batch["mask"].shape) == out + (1, SIZE, SIZE)
    vb = next(iter(dm.val_dataloader()))
    assert vb["inputs"].shape[0 if batch_first else 1] == min(4, len(valid))


def test_training_order_depends_on_seed_and_epoch(root):
    dm = make_dm(root, seed=5)
    dm.setup("fit")
    a = [b["inputs"] for b in dm.train_dataloader()]
    b = [b["inputs"] for b in dm.train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_errors_name_the_file(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="radarPNG"):
        make_dm(tmp_path / "nowhere").setup("fit")
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    times = read_frame_list(bad / "pd" / "hko7_rainy_test.pkl")
    missing = frame_path(bad / "radarPNG", times[1])
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing.name)):
        make_dm(bad).setup("test")
    # a frame of the wrong size
    Image.fromarray(np.zeros((RAW, RAW + 1), np.uint8)).save(missing)
    with pytest.raises(ValueError, match=f"{missing.name} is {RAW + 1}x{RAW}, expected {RAW}x{RAW}"):
        ds = make_dm(bad).build("test")
        for i in range(len(ds)):
            ds[i]
    # a missing mask file
    m = mask_path(bad / "radarPNG_mask", times[2])
    m.unlink()
    with pytest.raises(FileNotFoundError, match=m.name):
        make_dm(bad).setup("test")
    # a missing pickle, and a pickle without datetimes
    (bad / "pd" / "hko7_rainy_valid.pkl").unlink()
    with pytest.raises(FileNotFoundError, match="hko7_rainy_valid.pkl"):
        make_dm(bad).setup("validate")
    pd.DataFrame({"a": [1, 2]}).to_pickle(bad / "pd" / "hko7_rainy_valid.pkl")
    with pytest.raises(ValueError, match="hko7_rainy_valid.pkl must be a DataFrame/Series indexed by datetimes"):
        make_dm(bad).setup("validate")


def test_synthetic_prepare_data_generates_once(tmp_path):
    syn = dict(days=[1, 1, 1], frames_per_day=8, size=RAW, seed=1)
    dm = make_dm(tmp_path / "syn", synthetic=syn)
    dm.prepare_data()
    first = frame_path(tmp_path / "syn" / "radarPNG", read_frame_list(tmp_path / "syn" / "pd" / "hko7_rainy_train.pkl")[0])
    stamp = first.stat().st_mtime_ns
    make_dm(tmp_path / "syn", synthetic=syn).prepare_data()  # already there: not rewritten
    assert first.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="generated with"):
        make_dm(tmp_path / "syn", synthetic=dict(syn, seed=2)).prepare_data()
    # deterministic given the seed
    other = synthetic_radar.generate(tmp_path / "again", days=(1, 1, 1), frames_per_day=8, size=RAW, seed=1)
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(str(first).replace(str(tmp_path / "syn"), str(other)))))
