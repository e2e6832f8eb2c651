"""HKO-7 metrics against a direct float64 numpy computation of docs/method.md §9."""
import numpy as np
import pytest
import torch

from memel_lightning.metrics.nowcasting import (
    CSI,
    HSS,
    BalancedMAE,
    BalancedMSE,
    balancing_weights,
    pixel_to_rainfall,
    rainfall_to_pixel,
)

THR = (0.5, 2.0, 5.0, 10.0, 30.0)
W = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)


def np_rain(p):
    dbz = 70.0 * p - 10.0
    z = 10.0 ** (dbz / 10.0)
    return (z / 58.53) ** (1.0 / 1.56)


def np_weights(target):
    r = np_rain(target)
    w = np.full(r.shape, W[0])
    w[(r >= 0.5) & (r < 2)] = W[1]
    w[(r >= 2) & (r < 5)] = W[2]
    w[(r >= 5) & (r < 10)] = W[3]
    w[(r >= 10) & (r < 30)] = W[4]
    w[r >= 30] = W[5]
    return w


def np_balanced(pred, target, mask, power):
    """(T, B, C, H, W): summed over pixels, averaged over frames and sequences."""
    w = np_weights(target) * mask
    err = np.abs(pred - target) ** power
    per_frame = (w * err).sum(axis=(2, 3, 4))  # (T, B)
    return per_frame.mean()


def np_counts(pred, target, mask, axis=None):
    rp, rt = np_rain(pred), np_rain(target)
    out = []
    for t in THR:
        hp, ht = rp >= t, rt >= t
        out.append(
            [((hp & ht) & mask).sum(axis=axis), ((~hp & ht) & mask).sum(axis=axis),
             ((hp & ~ht) & mask).sum(axis=axis), ((~hp & ~ht) & mask).sum(axis=axis)]
        )
    return np.asarray(out, dtype=np.float64)  # (K, 4[, T])


def np_csi(tp, fn, fp, tn):
    return tp / (tp + fn + fp)


def np_hss(tp, fn, fp, tn):
    return 2 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def radar_like(shape, rng):
    """Pixels spread over all rain-rate bins (about a quarter of them dry)."""
    x = rng.uniform(0.0, 1.0, size=shape)
    x[rng.random(shape) < 0.25] = 0.0
    return x


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    shape = (4, 3, 1, 9, 7)  # (T, B, C, H, W)
    target = radar_like(shape, rng)
    pred = np.clip(target + rng.normal(0, 0.15, size=shape), 0, 1)
    mask = rng.random(shape) > 0.2
    return pred.astype(np.float32), target.astype(np.float32), mask


def test_conversions_match_formula():
    p = torch.linspace(0, 1, 101, dtype=torch.float64)
    np.testing.assert_allclose(pixel_to_rainfall(p).numpy(), np_rain(p.numpy()), rtol=1e-12)
    r = torch.tensor(THR, dtype=torch.float64)
    np.testing.assert_allclose(pixel_to_rainfall(rainfall_to_pixel(r)).numpy(), np.asarray(THR), rtol=1e-12)
    t = np.random.default_rng(1).uniform(0, 1, 1000)
    np.testing.assert_array_equal(balancing_weights(torch.from_numpy(t)).numpy(), np_weights(t))


@pytest.mark.parametrize("cls,power", [(BalancedMSE, 2), (BalancedMAE, 1)])
def test_balanced_errors_match_numpy(data, cls, power):
    pred, target, mask = data
    pred64, target64 = pred.astype(np.float64), target.astype(np.float64)
    m = cls()
    # two updates of different batch sizes: the mean is over all frames and sequences
    m.update(torch.from_numpy(pred[:, :2]), torch.from_numpy(target[:, :2]), torch.from_numpy(mask[:, :2]))
    m.update(torch.from_numpy(pred[:, 2:]), torch.from_numpy(target[:, 2:]), torch.from_numpy(mask[:, 2:]))
    expected = np_balanced(pred64, target64, mask, power)
    assert float(m.compute()) == pytest.approx(expected, rel=1e-9)
    # without a mask every pixel counts
    m2 = cls()
    m2.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert float(m2.compute()) == pytest.approx(np_balanced(pred64, target64, np.ones_like(mask), power), rel=1e-9)
    assert float(m2.compute()) > float(m.compute())


@pytest.mark.parametrize("cls,fn", [(CSI, np_csi), (HSS, np_hss)])
def test_scores_match_numpy_pooled_and_per_lead_time(data, cls, fn):
    pred, target, mask = data
    p64, t64 = pred.astype(np.float64), target.astype(np.float64)
    pooled = np_counts(p64, t64, mask)  # (K, 4)
    m = cls()
    m.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    np.testing.assert_allclose(m.compute().numpy(), fn(*pooled.T), rtol=1e-12)
    counts = m.tp.numpy(), m.fn.numpy(), m.fp.numpy(), m.tn.numpy()
    np.testing.assert_array_equal(np.stack(counts, -1), pooled)

    per_t = np_counts(p64, t64, mask, axis=(1, 2, 3, 4))  # (K, 4, T)
    expected = fn(*per_t.transpose(1, 0, 2)).mean(axis=-1)
    m_t = cls(seq_len=pred.shape[0])
    m_t.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    np.testing.assert_allclose(m_t.compute().numpy(), expected, rtol=1e-12)

    # batch-first input with time_axis=1 gives the same per-lead-time result
    m_b = cls(seq_len=pred.shape[0], time_axis=1)
    swap = lambda a: torch.from_numpy(np.ascontiguousarray(a.swapaxes(0, 1)))  # noqa: E731
    m_b.update(swap(pred), swap(target), swap(mask))
    np.testing.assert_allclose(m_b.compute().numpy(), expected, rtol=1e-12)


def test_zero_division_and_shape_errors():
    x = torch.zeros(2, 1, 1, 3, 3)
    m = CSI(thresholds=(0.5, 30.0))
    m.update(x, x)
    assert m.compute().tolist() == [0.0, 0.0]
    assert CSI(thresholds=(0.5,), zero_division=float("nan"))(x, x).isnan()
    with pytest.raises(ValueError, match="5-D"):
        BalancedMSE().update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="seq_len=3"):
        CSI(seq_len=3).update(x, x)
    with pytest.raises(ValueError, match="mask"):
        CSI().update(x, x, torch.ones(2, 2, 1, 3, 3, dtype=torch.bool))


@pytest.mark.parametrize("cls", [BalancedMSE, BalancedMAE, CSI, HSS])
def test_states_reduce_by_sum_like_ddp(data, cls):
    """Two "ranks" with different shards: merging their states (the dist_reduce_fx that
    DDP uses) gives the metric of all the data."""
    pred, target, mask = data
    assert all(fx is not None and getattr(fx, "__name__", "") in ("_sum", "dim_zero_sum", "sum")
               for fx in cls()._reductions.values())
    full, r0, r1 = cls(), cls(), cls()
    full.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    r0.update(torch.from_numpy(pred[:, :1]), torch.from_numpy(target[:, :1]), torch.from_numpy(mask[:, :1]))
    r1.update(torch.from_numpy(pred[:, 1:]), torch.from_numpy(target[:, 1:]), torch.from_numpy(mask[:, 1:]))
    r0.merge_state(r1)
    torch.testing.assert_close(r0.compute(), full.compute(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls,power", [(BalancedMSE, 2), (BalancedMAE, 1)])
@pytest.mark.parametrize("time_axis", [0, 1])
def test_balanced_errors_per_output_frame_match_numpy(cls, power, time_axis):
    rng = np.random.default_rng(7)
    t_out, chunks = 4, [3, 2]  # sequences arrive in two batches
    preds, targets, masks = [], [], []
    metric = cls(seq_len=t_out, time_axis=time_axis)
    for b in chunks:
        p, t = rng.random((t_out, b, 1, 6, 5)), rng.random((t_out, b, 1, 6, 5)) ** 3
        m = rng.random((t_out, b, 1, 6, 5)) < 0.8
        preds.append(p), targets.append(t), masks.append(m)
        to = (lambda x: torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 0, 1)))) if time_axis else torch.from_numpy
        metric.update(to(p), to(t), to(m))
    p, t, m = (np.concatenate(x, axis=1) for x in (preds, targets, masks))
    # per frame: weighted error summed over the frame's pixels, divided by the number of sequences
    want = (np_weights(t) * m * np.abs(p - t) ** power).sum(axis=(2, 3, 4)).sum(axis=1) / p.shape[1]
    got = metric.compute().numpy()
    assert got.shape == (t_out,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # the mean over frames is the pooled figure
    pooled = cls()
    pooled.update(torch.from_numpy(p), torch.from_numpy(t), torch.from_numpy(m))
    np.testing.assert_allclose(got.mean(), float(pooled.compute()), rtol=1e-12)
    with pytest.raises(ValueError, match="seq_len=4 but the frames have 3 time steps"):
        cls(seq_len=4).update(torch.zeros(3, 1, 1, 2, 2), torch.zeros(3, 1, 1, 2, 2))
