"""The fused fast path (inhibition/fused.py) against the reference selectors and
strategies and against direct float64 computations: values, gradients, masks, ties,
low precision, the compiled kernels, and the memory it keeps for backward."""
import copy
import math
import warnings

import pytest
import torch

from memel_lightning.inhibition import fused
from memel_lightning.inhibition.moments import batch_moments
from memel_lightning.inhibition.scale import phi_from
from memel_lightning.inhibition.selectors import MovingThreshold, Threshold, TopK
from memel_lightning.inhibition.strategies import (
    MeanNoGrad,
    MeanPassthrough,
    NoInhibition,
    Regularize,
    ReverseDeactivation,
    TapStatistics,
)


def data(n=12, f=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, f, generator=g) * torch.linspace(0.5, 2.0, f) + torch.linspace(-1, 1, f)).to(dtype)
    mu = (torch.randn(f, generator=g) * 0.1).float()
    denom = (torch.rand(f, generator=g) + 0.5).float()
    mask = torch.rand(n, f, generator=g) > 0.25
    mask[2] = False  # a row with nothing valid
    return z, mu, denom, mask


def make_selector(name):
    if name == "top1":
        return TopK(1)
    if name == "top3":
        return TopK(3)
    if name == "threshold":
        return Threshold(2.0)
    sel = MovingThreshold(target_ratio=0.1)
    sel.tau = torch.tensor(1.5)  # a started threshold (the first call takes the reference path)
    sel._started = True
    return sel


STRATEGIES = {
    "reverse": lambda: ReverseDeactivation(1.0),
    "reverse_2.5": lambda: ReverseDeactivation(2.5),
    "mean_nograd": MeanNoGrad,
    "mean_passthrough": MeanPassthrough,
    "none": NoInhibition,
}
SELECTORS = ["top1", "top3", "threshold", "moving"]


def reference_call(z, mu, denom, selector, strategy, mask):
    phi = phi_from(z.detach(), mu, denom)
    selected = selector(phi, mask, update=True)
    return strategy(z, selected, TapStatistics(mu, denom)), selected


@pytest.mark.parametrize("sel_name", SELECTORS)
@pytest.mark.parametrize("strat_name", list(STRATEGIES))
@pytest.mark.parametrize("masked", [False, True])
def test_fused_matches_reference_values_and_gradients(sel_name, strat_name, masked):
    z, mu, denom, mask = data()
    mask = mask if masked else None
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=z.dtype)
    sel_ref, sel_fast = make_selector(sel_name), make_selector(sel_name)
    zr = z.clone().requires_grad_()
    out_ref, selected = reference_call(zr, mu, denom, sel_ref, STRATEGIES[strat_name](), mask)
    out_ref.backward(grad)
    zf = z.clone().requires_grad_()
    out = fused.apply(zf, mu, denom, sel_fast, STRATEGIES[strat_name](), mask, update=True, inhibit=True)
    out.backward(grad)
    assert selected.any() and not selected.all()  # the data exercise both branches
    assert torch.equal(out.detach(), out_ref.detach())  # the same values, exactly
    torch.testing.assert_close(zf.grad, zr.grad, rtol=0, atol=1e-12)
    if sel_name == "moving":
        torch.testing.assert_close(sel_fast.tau, sel_ref.tau)
        torch.testing.assert_close(sel_fast.last_fraction, sel_ref.last_fraction)


def test_gradients_against_direct_float64_formulas():
    """reverse: -delta on selected values; mean_nograd 0; passthrough +1; others 1."""
    z, mu, denom, _ = data(seed=3)
    phi = (z - mu.double()) ** 2 / denom.double()
    selected = phi >= phi.max(dim=1, keepdim=True).values
    for strategy, factor in ((ReverseDeactivation(2.0), -2.0), (MeanNoGrad(), 0.0), (MeanPassthrough(), 1.0)):
        zf = z.clone().requires_grad_()
        out = fused.apply(zf, mu, denom, TopK(1), strategy, update=True, inhibit=True)
        out.sum().backward()
        want = torch.where(selected, torch.full_like(z, factor), torch.ones_like(z))
        assert torch.equal(zf.grad, want)
        assert torch.equal(out.detach(), torch.where(selected, mu.double().expand_as(z), z))


def test_ties_are_all_selected():
    mu, denom = torch.zeros(4), torch.ones(4)
    z = torch.tensor([[3.0, -3.0, 1.0, 0.0], [0.5, 2.0, 2.0, -2.0]], requires_grad=True)
    out = fused.apply(z, mu, denom, TopK(1), ReverseDeactivation(1.0), update=True, inhibit=True)
    assert out.detach().tolist() == [[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 0.0, 0.0]]


def test_masked_values_are_never_selected_and_masked_rows_pass_through():
    z, mu, denom, mask = data()
    z[~mask] = 1e6  # would win every row if it were not masked
    zf = z.clone().requires_grad_()
    out = fused.apply(zf, mu, denom, TopK(1), ReverseDeactivation(1.0), mask, update=True, inhibit=True)
    changed = out.detach() != z
    assert not (changed & ~mask).any()
    assert not changed[2].any()  # the row with nothing valid
    assert changed[mask.any(1)].sum(1).min() >= 1


def test_before_the_late_start_nothing_changes_but_the_moving_threshold_moves():
    z, mu, denom, _ = data()
    sel_ref, sel_fast = make_selector("moving"), make_selector("moving")
    reference_call(z, mu, denom, sel_ref, NoInhibition(), None)
    out = fused.apply(z, mu, denom, sel_fast, ReverseDeactivation(1.0), update=True, inhibit=False)
    assert out is z
    torch.testing.assert_close(sel_fast.tau, sel_ref.tau)
    assert fused.apply(z, mu, denom, TopK(1), ReverseDeactivation(1.0), update=True, inhibit=False) is z


def test_unknown_selector_or_strategy_returns_none():
    class Custom(TopK):
        pass

    z, mu, denom, _ = data()
    assert fused.apply(z, mu, denom, Custom(1), NoInhibition(), update=True, inhibit=True) is None
    fresh = MovingThreshold(0.1)  # not started: its quantile start is the reference's
    assert fused.apply(z, mu, denom, fresh, NoInhibition(), update=True, inhibit=True) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_matches_reference(dtype):
    z, mu, denom, mask = data(n=16, f=24, seed=5, dtype=dtype)
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    for sel_name in ("top1", "moving"):
        for m in (None, mask):
            zr, zf = z.clone().requires_grad_(), z.clone().requires_grad_()
            out_ref, _ = reference_call(zr, mu, denom, make_selector(sel_name), ReverseDeactivation(1.5), m)
            out_ref.backward(grad)
            out = fused.apply(zf, mu, denom, make_selector(sel_name), ReverseDeactivation(1.5), m,
                              update=True, inhibit=True)
            out.backward(grad)
            assert out.dtype == dtype and zf.grad.dtype == dtype
            assert torch.equal(out.detach(), out_ref.detach())
            assert torch.equal(zf.grad, zr.grad)


def test_batch_moments_match_the_reference_and_float64():
    z, _, _, mask = data(n=40, f=7, seed=4)
    z = z + 100.0  # a large mean next to a small spread: precision of the two-pass form
    for m in (None, mask):
        n, mean, m2 = fused.batch_moments(z, m)
        n_ref, mean_ref, m2_ref = batch_moments(z, m)
        assert torch.equal(n, n_ref)
        torch.testing.assert_close(mean, mean_ref)
        torch.testing.assert_close(m2, m2_ref, rtol=1e-5, atol=1e-4)
        valid = torch.ones_like(z, dtype=torch.bool) if m is None else m
        for j in range(z.shape[1]):
            col = z[valid[:, j], j]
            if col.numel():
                assert abs(float(mean[j]) - float(col.mean())) < 1e-4
                assert abs(float(m2[j]) - float(((col - col.mean()) ** 2).sum())) < 1e-3 * max(1.0, float(m2[j]))


def test_masked_nan_does_not_reach_the_moments():
    z, _, _, mask = data()
    z[~mask] = float("nan")
    n, mean, m2 = fused.batch_moments(z, mask)
    assert torch.isfinite(mean).all() and torch.isfinite(m2).all()


# ---------------------------------------------------------------- regulariser (docs/method.md §5.4)
@pytest.mark.parametrize("form", ["quadratic", "log"])
@pytest.mark.parametrize("masked", [False, True])
def test_regulariser_gradient_is_autograd_of_the_explicit_loss(form, masked):
    """Eq. 5 (log) and the quadratic form: the added gradient equals autograd of
    R = lambda / N * sum_selected r(z), r = (z - sg mu)^2 / denom or log((z - sg mu)^2 + eps * denom)."""

    lam, eps = 0.3, 0.5
    z, mu, denom, mask = data(seed=7)
    mask = mask if masked else None
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    zf = z.clone().requires_grad_()
    strategy = Regularize(reg_lambda=lam, reg_form=form, reg_eps=eps)
    out = fused.apply(zf, mu, denom, TopK(2), strategy, mask, update=True, inhibit=True, loss_scale=0.5)
    assert torch.equal(out.detach(), z)
    out.backward(grad)
    # the reference path: the same strategy on the reference selection
    zr = z.clone().requires_grad_()
    strategy(zr, TopK(2)(phi_from(z, mu, denom), mask), TapStatistics(mu, denom, loss_scale=0.5)).backward(grad)

    # explicit loss in float64, selection from the float64 phi
    zz = z.clone().requires_grad_()
    mu64, den64 = mu.double(), denom.double()
    phi = (z - mu64) ** 2 / den64
    scores = phi if mask is None else phi.masked_fill(~mask, -math.inf)
    kth = scores.topk(2, dim=1).values[:, -1:]
    selected = scores >= kth
    if mask is not None:
        selected &= mask
    d = zz - mu64
    r = d ** 2 / den64 if form == "quadratic" else torch.log(d ** 2 + eps * den64)
    loss = lam / z.shape[0] * r[selected].sum()
    ((zz * grad).sum() + 0.5 * loss).backward()  # loss_scale 0.5 scales the added term
    torch.testing.assert_close(zf.grad, zz.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(zr.grad, zz.grad, rtol=1e-6, atol=1e-9)
    # the logged penalty is N * R (log form: without the constant sum log S^2)
    per_value = d.detach() ** 2 / den64
    want = lam * (torch.log(per_value + eps) if form == "log" else per_value)[selected].sum()
    got = strategy.penalty(z, selected, TapStatistics(mu, denom))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_log_regulariser_pulls_toward_the_mean_with_size_two_over_distance():
    """d/dz lambda/N * log((z-mu)^2 + eps) = lambda/N * 2 (z-mu) / ((z-mu)^2 + eps): toward mu."""
    strategy = Regularize(reg_lambda=1.0, reg_form="log", reg_eps=1e-6)
    z = torch.tensor([[4.0, 0.0], [0.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = fused.apply(z, torch.zeros(2), torch.ones(2), TopK(1), strategy, update=True, inhibit=True)
    out.sum().backward()
    # rows: the selected values are 4 (row 0) and -2 (row 1); N = 2
    torch.testing.assert_close(z.grad, torch.tensor([[1 + 0.5 * 2 / 4, 1.0], [1.0, 1 + 0.5 * 2 / -2]],
                                                    dtype=torch.float64), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- memory kept for backward
def saved_bytes(fn):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize("strategy", [ReverseDeactivation(1.0), MeanNoGrad()])
def test_replace_strategies_keep_one_byte_per_value_for_backward(strategy):
    z, mu, denom, _ = data(n=64, f=256, dtype=torch.float32)
    zf = z.clone().requires_grad_()
    got = saved_bytes(lambda: fused.apply(zf, mu, denom, TopK(1), strategy, update=True, inhibit=True))
    assert got == z.numel()  # the uint8 selection, nothing else
    assert saved_bytes(lambda: fused.apply(zf, mu, denom, TopK(1), MeanPassthrough(), update=True, inhibit=True)) == 0


# ---------------------------------------------------------------- compiled kernels and fallback
def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    kernel = fused.Kernel(fused.k_grad_scale)

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setenv(fused.COMPILE_ENV, "always")
    grad, sel = torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = kernel(grad, sel, -1.0)
    assert out.tolist() == [[-1.0, 1.0, 1.0], [1.0, 1.0, -1.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel(grad, sel, -1.0)  # no second warning, no second attempt
    assert kernel.failed


def test_compile_mode_is_validated(monkeypatch):
    monkeypatch.setenv(fused.COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match="MEMEL_FUSED_COMPILE must be"):
        fused.compile_mode()


def test_compiled_kernels_match_eager(monkeypatch):
    """The inductor-compiled kernels (C++ on CPU) give the eager kernels' values."""
    monkeypatch.setenv(fused.COMPILE_ENV, "always")
    for kernel in (fused.MOMENTS, fused.REPLACE, fused.GRAD_SCALE, fused.SELECT, fused.UPDATE_SCALE):
        kernel.failed = False
    z, mu, denom, _ = data(n=16, f=40, seed=9, dtype=torch.float32)
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(4))
    for sel_name in ("top1", "moving"):
        zr, zf = z.clone().requires_grad_(), z.clone().requires_grad_()
        sel_ref, sel_fast = make_selector(sel_name), make_selector(sel_name)
        out_ref, _ = reference_call(zr, mu, denom, sel_ref, ReverseDeactivation(1.0), None)
        out_ref.backward(grad)
        out = fused.apply(zf, mu, denom, sel_fast, ReverseDeactivation(1.0), update=True, inhibit=True)
        out.backward(grad)
        assert torch.equal(out.detach(), out_ref.detach())
        assert torch.equal(zf.grad, zr.grad)
        if sel_name == "moving":
            torch.testing.assert_close(sel_fast.tau, sel_ref.tau)
    n, mean, m2 = fused.batch_moments(z)
    n_ref, mean_ref, m2_ref = batch_moments(z)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(m2, m2_ref)
    # the compiled statistics update against RunningMoments + scale_parameters
    from memel_lightning.inhibition.moments import RunningMoments
    from memel_lightning.inhibition.scale import scale_parameters

    ref, fast = RunningMoments(forget_steps=2), RunningMoments(forget_steps=2)
    ref.update(z)
    fast.update(z)
    assert fused.can_update(fast, z.numel())  # compiled in this mode, whatever the size
    for step in range(4):
        x = z * (step + 2) + step
        ref.update(x)
        mu, denom = fused.update_and_scale(fast, x, None, 0.01)
        torch.testing.assert_close(mu, ref.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.var, ref.var, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(denom, scale_parameters(ref, z.shape[1], 0.01)[1], rtol=1e-5, atol=1e-5)
        assert torch.equal(fast.count, ref.count) and torch.equal(fast.steps, ref.steps)
    assert fused.UPDATE_SCALE._compiled is not None
    assert not any(k.failed for k in (fused.MOMENTS, fused.REPLACE, fused.GRAD_SCALE, fused.SELECT, fused.UPDATE_SCALE))
    assert fused.REPLACE._compiled is not None


# ---------------------------------------------------------------- statistics update (docs/method.md §2-§3)
@pytest.mark.parametrize("masked", [False, True])
def test_update_and_scale_matches_running_moments_over_a_stream(masked):
    """Merge, forgetting (more batches than forget_steps), a skipped non-finite batch,
    masked neurons, and the variance floor over seen neurons: as RunningMoments + scale_parameters."""
    from memel_lightning.inhibition.moments import RunningMoments
    from memel_lightning.inhibition.scale import scale_parameters

    ref, fast = RunningMoments(forget_steps=3), RunningMoments(forget_steps=3)
    g = torch.Generator().manual_seed(11)
    first = torch.randn(9, 6, generator=g)
    ref.update(first)
    fast.update(first)  # the first batch allocates the statistics (reference path)
    assert fused.can_update(fast)
    for step in range(7):
        x = torch.randn(9, 6, generator=g) * (1 + step) + step
        mask = (torch.rand(9, 6, generator=g) > 0.3) if masked else None
        if masked:
            mask[:, 4] = False  # a neuron with no valid value this batch keeps its statistics
        if masked:
            x[~mask] = float("nan")  # NaN at masked positions never counts
        if step == 3:  # a non-finite valid value: the batch is skipped
            r, c = mask.nonzero()[0].tolist() if masked else (0, 0)
            x[r, c] = float("inf")
        ref.update(x, mask)
        mu_ref, denom_ref = scale_parameters(ref, 6, 0.01)
        mu, denom = fused.update_and_scale(fast, x, mask, 0.01)
        for name in ("mean", "var"):
            torch.testing.assert_close(getattr(fast, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
        for name in ("count", "steps", "skipped"):
            assert torch.equal(getattr(fast, name), getattr(ref, name)), (name, step)
        torch.testing.assert_close(mu, mu_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(denom, denom_ref, rtol=1e-5, atol=1e-6)
    assert int(fast.skipped) == 1


def test_update_and_scale_refuses_other_statistics():
    from memel_lightning.inhibition.moments import RunningMoments

    assert not fused.can_update(RunningMoments())  # not initialised yet
    grow = RunningMoments(variable_size=True)
    grow.update(torch.randn(4, 3))
    assert not fused.can_update(grow)
    strict = RunningMoments(nonfinite="raise")
    strict.update(torch.randn(4, 3))
    assert not fused.can_update(strict)


# ---------------------------------------------------------------- through MEmeL: impl fused == impl reference
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("selector", ["topk", "moving_threshold"])
def test_memel_fused_and_reference_keep_the_same_state_and_outputs(selector, labelled, monkeypatch):
    """A stream of plain training calls (no metrics recorded: the fast path's case), with
    and without feature labels: outputs, gradients and every buffer (moments, threshold,
    the labelled FKR's statistics) agree between impl="fused" and impl="reference"."""
    from memel_lightning.inhibition import MEmeL

    monkeypatch.setenv(fused.COMPILE_ENV, "never")  # the fast path at this small size, eager kernels
    assert fused.pays(10)
    opts = dict(selector=selector, k=1, target_ratio=0.1, late_start=2, reduce_dims=[0])
    fast, ref = MEmeL(impl="fused", **opts), MEmeL(impl="reference", **opts)
    g = torch.Generator().manual_seed(5)
    for step in range(6):
        z = torch.randn(4, 6, 10, generator=g, dtype=torch.float64) * (1 + step)
        labels = torch.randint(0, 3, (4,), generator=g) if labelled else None
        grad = torch.randn(z.shape, generator=g, dtype=torch.float64)
        outs = []
        for memel in (fast, ref):
            zz = z.clone().requires_grad_()
            out = memel(zz, labels=labels)
            out.backward(grad)
            outs.append((out.detach(), zz.grad))
        # the same values replaced (exactly), by the same float32 running means (up to
        # the rounding of a fused multiply-add in the merge)
        assert torch.equal(outs[0][0] != z, outs[1][0] != z), step
        assert (outs[1][0] != z).any() == (step >= 2)
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=1e-12)
    state_fast, state_ref = fast.state_dict(), ref.state_dict()
    assert state_fast.keys() == state_ref.keys()
    for key, value in state_ref.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(state_fast[key], value, rtol=1e-5, atol=1e-6, msg=key)
