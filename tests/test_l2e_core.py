"""L2E parts of the inhibition core: moving threshold, regulariser gradient, kill concentration."""
import math

import numpy as np
import pytest
import torch

from memel_lightning.inhibition import MEmeL
from memel_lightning.inhibition.selectors import MovingThreshold
from memel_lightning.inhibition.strategies import Regularize, TapStatistics


# ---------------------------------------------------------------- moving threshold
def _exceedance(tau: float, scale: float) -> float:
    """P(phi > tau) for phi ~ Exponential(mean=scale): exp(-tau / scale)."""
    return math.exp(-tau / scale)


@pytest.mark.parametrize("rho", [0.02, 0.1])
def test_moving_threshold_converges_on_stationary_stream(rho):
    g = torch.Generator().manual_seed(1)
    sel = MovingThreshold(target_ratio=rho)
    fractions, exceed = [], []
    for step in range(400):
        phi = torch.empty(64, 256).exponential_(1.0, generator=g)
        selected = sel(phi)
        if step >= 200:
            fractions.append(selected.float().mean().item())
            exceed.append(_exceedance(float(sel.tau), 1.0))
    # The selected fraction (measured) and the true share above tau (closed form) both
    # converge to rho within 10 % relative.
    assert abs(np.mean(fractions) - rho) / rho < 0.10
    assert abs(np.mean(exceed) - rho) / rho < 0.10
    # tau itself tracks the (1 - rho) quantile of the distribution, -log(rho).
    assert abs(float(sel.tau) - (-math.log(rho))) / -math.log(rho) < 0.10


def test_moving_threshold_follows_a_shift():
    rho = 0.02
    g = torch.Generator().manual_seed(2)
    sel = MovingThreshold(target_ratio=rho)
    for scale in (1.0, 8.0, 0.5):  # the distribution jumps twice
        fracs = []
        for step in range(300):
            phi = torch.empty(64, 256).exponential_(scale, generator=g)  # exponential_(lambd): mean 1/lambd
            selected = sel(phi)
            if step >= 150:
                fracs.append(selected.float().mean().item())
        quantile = -math.log(rho) / scale
        assert abs(float(sel.tau) - quantile) / quantile < 0.10, (scale, float(sel.tau), quantile)
        assert abs(np.mean(fracs) - rho) / rho < 0.10


def test_moving_threshold_respects_mask_and_eval():
    sel = MovingThreshold(target_ratio=0.5)
    phi = torch.arange(8.0).reshape(2, 4)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = sel(phi, mask)
    assert not out[~mask].any()
    # tau started at the median of the 6 valid values (kthvalue 3 of [0,1,4,5,6,7] = 4)
    assert out.sum().item() == 3
    tau = sel.tau.clone()
    sel(phi, mask, update=False)
    assert torch.equal(sel.tau, tau)  # eval does not move tau
    fresh = MovingThreshold(target_ratio=0.5)
    assert not fresh(phi, update=False).any()  # nothing selected before the first training batch
    assert torch.isnan(fresh.tau)


def test_moving_threshold_state_roundtrip():
    sel = MovingThreshold(target_ratio=0.1)
    sel(torch.rand(10, 10))
    other = MovingThreshold(target_ratio=0.1)
    other.load_state_dict(sel.state_dict())
    phi = torch.rand(10, 10)
    assert torch.equal(other(phi), sel(phi))
    assert torch.equal(other.tau, sel.tau)


# ---------------------------------------------------------------- regulariser gradient
def test_regulariser_gradient_equals_explicit_loss_float64():
    g = torch.Generator().manual_seed(3)
    n, f, lam = 12, 7, 0.37
    x = torch.randn(n, 5, dtype=torch.float64, generator=g)
    w = torch.randn(5, f, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(n, f, dtype=torch.float64, generator=g)
    mean = torch.randn(f, generator=g)  # statistics are float32 in the core
    denom = torch.rand(f, generator=g) + 0.1
    selected = torch.rand(n, f, generator=g) < 0.3

    reg = Regularize(reg_lambda=lam)
    z = x @ w
    out = reg(z, selected, TapStatistics(mean, denom))
    task = ((out.tanh() - target) ** 2).sum()
    (grad_ours,) = torch.autograd.grad(task, w)

    z_ref = x @ w
    mu, de = mean.double(), denom.double()
    explicit = lam * (((z_ref - mu) ** 2 / de) * selected).sum() / n
    total = ((z_ref.tanh() - target) ** 2).sum() + explicit
    (grad_ref,) = torch.autograd.grad(total, w)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-12, atol=1e-12)
    (grad_task,) = torch.autograd.grad((((x @ w).tanh() - target) ** 2).sum(), w)
    assert not torch.allclose(grad_ours, grad_task)  # the regulariser did contribute
    # the metric's penalty is N times the explicit regulariser
    assert reg.penalty(z.detach(), selected, TapStatistics(mean, denom)).item() == pytest.approx(
        n * explicit.item(), rel=1e-6
    )


def test_regularize_through_memel_matches_explicit_loss():
    """End to end through MEmeL: the tap's gradient is d(task + R)/dz with R from its statistics."""
    torch.manual_seed(4)
    memel = MEmeL(selector="moving_threshold", target_ratio=0.1, strategy="regularize", reg_lambda=0.5,
                  late_start=0, reduce_dims=(0,))
    for _ in range(3):
        memel(torch.randn(4, 6, 8))
    z = torch.randn(4, 6, 8, dtype=torch.float64, requires_grad=True)
    memel.begin_step(record=True)
    out = memel(z)
    assert torch.equal(out, z)  # forward unchanged
    (out ** 3).sum().backward()
    metrics = memel.end_step()
    # rebuild R from the statistics after this step's merge (score_with="updated")
    mu, v = memel.moments.mean.double(), memel.moments.var.double()
    denom = v + memel.eps * v.mean()
    z2 = z.detach().reshape(24, 8)
    phi = (z2 - mu) ** 2 / denom
    expected = 3 * z.detach() ** 2
    # the added gradient is 2 * lambda / N * (z - mu) / denom on selected values only
    extra = (z.grad - expected).reshape(24, 8)
    nz = extra != 0
    assert nz.any()
    ratio = extra[nz] / ((z2 - mu)[nz] / denom.expand(24, 8)[nz])
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2 * 0.5 / 24), rtol=1e-5, atol=0)
    assert metrics["reg_loss"].item() == pytest.approx(
        (0.5 / 24 * (phi * nz).sum()).item(), rel=1e-4
    )


def test_regularize_records_loss_only_when_asked():
    memel = MEmeL(selector="moving_threshold", strategy="regularize", late_start=0)
    memel.begin_step(record=False)
    memel(torch.randn(16, 8, requires_grad=True))
    assert memel.end_step() == {}
    memel.begin_step(record=True)
    memel(torch.randn(16, 8, requires_grad=True))
    assert "reg_loss" in memel.end_step()


def test_reg_loss_of_a_tap_called_twice_is_the_sum_of_both_regularisers():
    torch.manual_seed(5)
    memel = MEmeL(selector="moving_threshold", target_ratio=0.2, strategy="regularize", reg_lambda=0.5, late_start=0)
    memel(torch.randn(10, 6))
    memel.begin_step(record=True)
    expected = 0.0
    for _ in range(2):
        z = torch.randn(10, 6, dtype=torch.float64)
        selected_before = memel.selector.tau.clone()
        memel(z)
        mu, v = memel.moments.mean.double(), memel.moments.var.double()
        phi = (z - mu) ** 2 / (v + memel.eps * v.mean())
        expected += 0.5 / 10 * float((phi * (phi > selected_before.double())).sum())
    assert memel.end_step()["reg_loss"].item() == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- false killing rate
class _Fixed(MovingThreshold):
    """A selector returning a hand-made selection."""

    def __init__(self, selection):
        super().__init__()
        self.selection = selection

    def forward(self, phi, mask=None, update=True):
        return self.selection if mask is None else self.selection & mask


def _fkr_reference(selection: np.ndarray, valid: np.ndarray, max_share: float) -> tuple[float, float]:
    kills = false = 0.0
    for j in range(selection.shape[1]):
        k = selection[:, j].sum()
        kills += k
        if k > max_share * valid[:, j].sum():
            false += k
    return false, kills


@pytest.mark.parametrize("use_mask", [False, True])
def test_kill_concentration_on_hand_made_selections(use_mask):
    n, f = 20, 5
    sel = np.zeros((n, f), dtype=bool)
    sel[3, 0] = True                 # neuron 0: 1 of 20 samples  -> true kill
    sel[:2, 1] = True                # neuron 1: 2 of 20 = 0.1, not > 0.1 -> true kills
    sel[:5, 2] = True                # neuron 2: 5 of 20 -> broad: 5 false kills
    sel[::2, 3] = True               # neuron 3: 10 of 20 -> 10 false kills
    mask = np.ones((n, f), dtype=bool)
    if use_mask:
        mask[10:, :] = False         # only 10 valid samples: neuron 1 now 2/10 -> false
        sel &= mask
    memel = MEmeL(selector_module=_Fixed(torch.from_numpy(sel)), strategy="none", late_start=0, max_share=0.1)
    z = torch.randn(n, f)
    memel.begin_step()
    memel(z, torch.from_numpy(mask[:, 0]) if use_mask else None)
    m = memel.end_step()
    false, kills = _fkr_reference(sel, mask, 0.1)
    assert m["kills"].item() == kills
    assert m["concentrated_kills"].item() == false
    assert m["kill_concentration"].item() == pytest.approx(false / kills)
    assert m["selected_frac"].item() == pytest.approx(kills / mask.sum())


def test_kill_concentration_zero_without_kills_and_before_late_start():
    memel = MEmeL(selector_module=_Fixed(torch.ones(4, 3, dtype=torch.bool)), strategy="none", late_start=5)
    memel.begin_step()
    memel(torch.randn(4, 3))
    m = memel.end_step()
    assert m["kill_concentration"].item() == 0.0 and m["kills"].item() == 0.0


@pytest.mark.parametrize("strategy,late_start", [("none", 0), ("reverse", 5), ("regularize", 5)])
def test_output_keeps_the_tap_shape_when_nothing_is_rewritten(strategy, late_start):
    """A (B, L, H) tap whose values pass through (strategy none, or before the late start)
    must come back as (B, L, H), not as the (B*L, H) sample matrix."""
    memel = MEmeL(strategy=strategy, late_start=late_start, reduce_dims=(0,))
    z = torch.randn(2, 3, 4)
    out = memel(z)
    assert out.shape == z.shape and torch.equal(out, z)


def test_regulariser_gradient_is_scaled_like_the_task_loss():
    """Lightning backpropagates loss * c (c = 1/accumulate_grad_batches times the AMP scale):
    the regulariser's gradient must be that of (task + R) * c, as if R were in the loss."""
    from memel_lightning.inhibition import Regularize, TapStatistics

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mu, denom = torch.randn(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    selected = torch.rand(6, 5, generator=g) > 0.5
    lam, c = 0.3, 1.0 / 8 * 1024.0
    reg = Regularize(lam)
    ours = z.clone().requires_grad_()
    (reg(ours, selected, TapStatistics(mu, denom, loss_scale=c)).pow(2).sum() * c).backward()
    ref = z.clone().requires_grad_()
    r = lam * (((ref - mu) ** 2 / denom) * selected).sum() / 6
    ((ref.pow(2).sum() + r) * c).backward()
    torch.testing.assert_close(ours.grad, ref.grad)


def test_callback_passes_the_loss_scale_of_gradient_accumulation(tmp_path):
    """With accumulate_grad_batches=4 the callback opens the step with loss_scale 1/4: the
    regulariser's extra gradient is a quarter of the one with loss_scale 1."""
    import copy

    import lightning.pytorch as pl

    from memel_lightning.callback import MEmeLCallback
    from memel_lightning.models.digits import DigitsClassifier

    model = DigitsClassifier(hidden_sizes=(8,))
    cb = MEmeLCallback(taps="default", memel={"strategy": "regularize", "late_start": 0, "reg_lambda": 1.0})
    trainer = pl.Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=4, logger=False, default_root_dir=tmp_path)
    cb.setup(trainer, model, "fit")
    memel = cb.memel_for("hidden.0")
    plain = copy.deepcopy(memel)
    z = torch.randn(6, 8)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    cb.on_train_batch_start(trainer, model, None, 0)
    memel(za).sum().backward()
    cb._tapset.end_step()
    plain.begin_step(loss_scale=1.0)
    plain(zb).sum().backward()
    plain.end_step()
    extra_a, extra_b = za.grad - 1.0, zb.grad - 1.0
    assert extra_b.abs().sum() > 0
    torch.testing.assert_close(extra_a, 0.25 * extra_b)
    cb.teardown(trainer, model, "fit")


def test_moving_threshold_does_not_stick_at_zero_or_nan():
    from memel_lightning.inhibition import MovingThreshold

    sel = MovingThreshold(target_ratio=0.1)
    sel(torch.zeros(4, 50))  # phi all 0 (e.g. one sample per neuron): the quantile is 0
    assert float(sel.tau) > 0
    nan_first = MovingThreshold(target_ratio=0.1)
    phi = torch.rand(4, 50)
    phi[0, 0] = float("nan")
    nan_first(phi)
    assert torch.isfinite(nan_first.tau)
    for _ in range(200):
        frac = sel(torch.rand(64, 50) * 10).float().mean()
    assert abs(float(frac) - 0.1) < 0.05
