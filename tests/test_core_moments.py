"""RunningMoments and the Monosemantic Scale against the float64 reference (docs/method.md §2-§3)."""
import numpy as np
import pytest
import torch

from memel_lightning.inhibition import NonFiniteStatisticsError, RunningMoments, monosemantic_scale
from reference import ReferenceMoments


def batches(sizes, num_neurons=7, seed=0, loc=3.0):
    g = torch.Generator().manual_seed(seed)
    for i, b in enumerate(sizes):
        # shift the distribution over time so forgetting matters
        yield torch.randn(b, num_neurons, generator=g) * (1.0 + 0.1 * i) + loc + 0.2 * i


SIZES = [5, 2, 9, 3, 16, 4, 7, 2, 11, 6, 3, 8, 5, 12, 2, 9, 4, 6, 3, 10]


@pytest.mark.parametrize("forget_steps", [1, 3, 10])
def test_moments_match_reference_over_many_batch_sizes(forget_steps):
    ours = RunningMoments(forget_steps=forget_steps)
    ref = ReferenceMoments(7, forget_steps=forget_steps)
    for x in batches(SIZES):
        ours.update(x)
        ref.update(x.numpy())
        np.testing.assert_allclose(ours.mean.numpy(), ref.mu, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.var.numpy(), ref.v, rtol=1e-4, atol=1e-5)
    assert ours.mean.dtype == torch.float32 and ours.var.dtype == torch.float32
    assert ours.count.tolist() == [sum(SIZES)] * 7
    assert ours.steps.tolist() == [len(SIZES)] * 7


def test_before_forgetting_equals_numpy_mean_and_unbiased_variance():
    ours = RunningMoments(forget_steps=1000)
    seen = []
    for x in batches(SIZES):
        ours.update(x)
        seen.append(x.numpy().astype(np.float64))
        all_x = np.concatenate(seen)
        np.testing.assert_allclose(ours.mean.numpy(), all_x.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.var.numpy(), all_x.var(0, ddof=1), rtol=1e-4, atol=1e-5)


def test_forgetting_is_an_ema_with_horizon_n_f():
    # With constant batches after warm-up the mean converges to the new level geometrically:
    # mu' = (n_f*mu + mb) / (n_f + 1) for equal batch sizes.
    nf = 4
    m = RunningMoments(forget_steps=nf)
    for _ in range(nf):
        m.update(torch.zeros(8, 1))
    m.update(torch.ones(8, 1))
    assert m.mean.item() == pytest.approx(1.0 / (nf + 1), rel=1e-6)


def test_masked_values_never_enter_the_statistics():
    g = torch.Generator().manual_seed(1)
    ours = RunningMoments(forget_steps=3)
    ref = ReferenceMoments(6, forget_steps=3)
    for b in [6, 4, 9, 5, 7, 3, 8]:
        x = torch.randn(b, 6, generator=g)
        mask = torch.rand(b, 6, generator=g) > 0.35
        mask[:, 5] = False  # a neuron never seen
        poisoned = x.masked_fill(~mask, 1e6)  # masked values must not matter at all
        ours.update(poisoned, mask)
        ref.update(x.numpy(), mask.numpy())
    np.testing.assert_allclose(ours.mean.numpy(), ref.mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.var.numpy(), ref.v, rtol=1e-4, atol=1e-5)
    assert ours.count.tolist() == ref.m.astype(int).tolist()
    assert ours.steps.tolist() == ref.c.tolist()
    assert ours.count[5] == 0 and ours.mean[5] == 0


def test_large_mean_keeps_float32_precision():
    # two-pass batch moments: a mean of 1e4 with unit spread must not lose the variance
    m = RunningMoments(forget_steps=100)
    all_x = []
    for x in batches([64] * 5, loc=1e4):
        m.update(x)
        all_x.append(x.double().numpy())
    np.testing.assert_allclose(m.var.numpy(), np.concatenate(all_x).var(0, ddof=1), rtol=2e-3)


def test_shape_change_is_a_clear_error():
    m = RunningMoments(name="blocks.3")
    m.update(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"blocks\.3.*6 neurons.*5"):
        m.update(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"expects \(N, F\)"):
        m.update(torch.randn(4, 5, 1))


def test_variable_size_merges_a_prefix_and_grows():
    m = RunningMoments(variable_size=True)
    ref = ReferenceMoments(6)
    x1, x2 = torch.randn(5, 6), torch.randn(4, 3)
    m.update(x1)
    ref.update(x1.numpy())
    m.update(x2)  # only the first 3 neurons are present
    mask = np.zeros((4, 6), dtype=bool)
    mask[:, :3] = True
    ref.update(np.pad(x2.numpy(), ((0, 0), (0, 3))), mask)
    np.testing.assert_allclose(m.mean.numpy(), ref.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.var.numpy(), ref.v, rtol=1e-5, atol=1e-6)
    m.update(torch.randn(3, 8))
    assert m.num_neurons == 8 and m.steps.tolist() == [3, 3, 3, 2, 2, 2, 1, 1]


def test_nonfinite_batch_is_skipped_and_counted():
    m = RunningMoments()
    m.update(torch.randn(6, 3))
    before = (m.mean.clone(), m.var.clone(), m.count.clone(), m.steps.clone())
    bad = torch.randn(6, 3)
    bad[2, 1] = float("nan")
    assert not bool(m.update(bad))
    for a, b in zip(before, (m.mean, m.var, m.count, m.steps)):
        assert torch.equal(a, b)
    assert int(m.skipped) == 1
    bad[2, 1] = float("inf")
    m.update(bad)
    assert int(m.skipped) == 2
    # a NaN in a masked position is harmless
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[2, 1] = False
    bad[2, 1] = float("nan")
    assert bool(m.update(bad, mask)) and int(m.skipped) == 2


def test_nonfinite_raise_names_the_tap():
    m = RunningMoments(nonfinite="raise", name="encoder.layer.5")
    with pytest.raises(NonFiniteStatisticsError, match=r"encoder\.layer\.5"):
        m.update(torch.tensor([[float("nan")], [1.0]]))
    assert not m.count.any()


def test_state_dict_round_trip_into_an_unsized_instance():
    m = RunningMoments(forget_steps=3)
    for x in batches([4, 5, 6, 7]):
        m.update(x)
    fresh = RunningMoments(forget_steps=3)
    fresh.load_state_dict(m.state_dict())
    for key in ("mean", "var", "count", "steps", "skipped"):
        assert torch.equal(getattr(fresh, key), getattr(m, key))
    x = torch.randn(5, 7)
    m.update(x)
    fresh.update(x)
    assert torch.equal(fresh.mean, m.mean) and torch.equal(fresh.var, m.var)


def test_statistics_never_require_grad():
    m = RunningMoments()
    x = torch.randn(4, 3, requires_grad=True)
    m.update(x * 2)
    assert not m.mean.requires_grad and not m.var.requires_grad


def test_monosemantic_scale_matches_reference():
    ours = RunningMoments(forget_steps=2)
    ref = ReferenceMoments(7, forget_steps=2)
    for x in batches([5, 8, 3, 6]):
        ours.update(x)
        ref.update(x.numpy())
    z = torch.randn(10, 7) * 3
    for eps in (0.0, 0.01, 0.5):
        np.testing.assert_allclose(
            monosemantic_scale(z, ours, eps).numpy(), ref.phi(z.numpy(), eps), rtol=1e-4, atol=1e-6
        )


def test_monosemantic_scale_keeps_shape_and_uses_float32():
    m = RunningMoments()
    x = torch.randn(6, 2, 3, dtype=torch.bfloat16)
    m.update(x.reshape(6, -1))
    phi = monosemantic_scale(x, m)
    assert phi.shape == x.shape and phi.dtype == torch.float32


def test_monosemantic_scale_needs_statistics():
    with pytest.raises(RuntimeError, match="feed a batch first"):
        monosemantic_scale(torch.randn(2, 3), RunningMoments())
