"""MEmeL (selection + inhibition + metrics) against the float64 reference (docs/method.md §3-§6)."""
import copy

import numpy as np
import pytest
import torch

from memel_lightning.inhibition import (
    MEmeL,
    MeanNoGrad,
    MeanPassthrough,
    ReverseDeactivation,
    TapStatistics,
    Threshold,
    TopK,
)
from reference import ReferenceMoments, reference_strategy, reference_topk

STRATEGY_GRADIENT = {"reverse": None, "mean_nograd": 0.0, "mean_passthrough": 1.0, "none": 1.0}


def feed(memel, xs, mask=None):
    out = None
    for x in xs:
        out = memel(x, mask)
    return out


def recorded_step(memel, x, mask=None):
    """One training batch with metrics: begin_step, the call, end_step."""
    memel.begin_step(record=True)
    out = memel(x, mask)
    return out, memel.end_step()


def stream(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * (1 + 0.2 * i) + 0.3 * i for i in range(n)]


# ---------------------------------------------------------------- selectors
def test_topk_matches_reference_with_ties_and_masks():
    g = torch.Generator().manual_seed(0)
    phi = torch.randint(0, 6, (12, 9), generator=g).float()  # many ties
    mask = torch.rand(12, 9, generator=g) > 0.3
    mask[3] = False  # a row with nothing valid
    for k in (1, 2, 5, 20):
        for m in (None, mask):
            got = TopK(k)(phi, m).numpy()
            want = reference_topk(phi.double().numpy(), k, None if m is None else m.numpy())
            assert (got == want).all(), (k, m is None)
    assert not TopK(3)(phi, mask)[3].any()


def test_threshold_is_strict_and_respects_the_mask():
    phi = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True], [False, True, True]])
    assert Threshold(2.0)(phi).tolist() == [[False, False, True], [True, False, True]]
    assert Threshold(2.0)(phi, mask).tolist() == [[False, False, True], [False, False, True]]


# ---------------------------------------------------------------- strategies
@pytest.mark.parametrize(
    "strategy,delta",
    [("reverse", 1.0), ("reverse", 5.0), ("reverse", 0.0), ("reverse", -1.0),
     ("mean_nograd", 1.0), ("mean_passthrough", 1.0), ("none", 1.0)],
)
def test_strategies_match_the_spec_table_values_and_gradients(strategy, delta):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mu = torch.randn(5, generator=g, dtype=torch.float64)
    selected = torch.rand(6, 5, generator=g) > 0.6
    upstream = torch.randn(6, 5, generator=g, dtype=torch.float64)

    memel = MEmeL(strategy=strategy, delta=delta)
    z_ours = z.float().requires_grad_()
    out = memel.strategy(z_ours, selected, TapStatistics(mu.float(), torch.ones(5)))
    (out.double() * upstream).sum().backward()

    z_ref = z.clone().requires_grad_()
    ref = reference_strategy(z_ref, selected, mu, strategy, delta)
    (ref * upstream).sum().backward()

    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z_ours.grad.double(), z_ref.grad, rtol=1e-6, atol=1e-6)
    expected = -delta if strategy == "reverse" else STRATEGY_GRADIENT[strategy]
    torch.testing.assert_close(z_ours.grad[selected].double(), (upstream * expected)[selected])
    torch.testing.assert_close(z_ours.grad[~selected].double(), upstream[~selected])
    if strategy in ("reverse", "mean_nograd", "mean_passthrough"):
        torch.testing.assert_close(out[selected], mu.float().expand(6, 5)[selected], rtol=0, atol=0)


def test_reverse_with_delta_0_and_minus_1_equals_the_naive_strategies():
    z = torch.randn(8, 4)
    mu = torch.randn(4)
    sel = torch.rand(8, 4) > 0.5
    up = torch.randn(8, 4)
    stats = TapStatistics(mu, torch.ones(4))
    for delta, naive in ((0.0, MeanNoGrad()), (-1.0, MeanPassthrough())):
        a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
        out_a = ReverseDeactivation(delta)(a, sel, stats)
        out_b = naive(b, sel, stats)
        (out_a * up).sum().backward()
        (out_b * up).sum().backward()
        assert torch.equal(out_a, out_b) and torch.equal(a.grad, b.grad)


# ---------------------------------------------------------------- MEmeL end to end
def reference_memel_step(ref, x, k, delta, score_with, late, step, eps=0.01):
    """One MEmeL training step per docs/method.md: returns (output, grad wrt x for upstream=1, selection)."""
    phi = None
    if score_with == "previous" and step > 0:
        phi = ref.phi(x.numpy(), eps)
    ref.update(x.numpy())
    if score_with == "updated":
        phi = ref.phi(x.numpy(), eps)
    selected = torch.zeros(x.shape, dtype=torch.bool) if phi is None else torch.from_numpy(reference_topk(phi, k))
    if step < late:
        selected = torch.zeros_like(selected)
    z = x.double().requires_grad_()
    out = reference_strategy(z, selected, torch.from_numpy(ref.mu.copy()), "reverse", delta)
    out.sum().backward()
    return out.detach(), z.grad, selected


@pytest.mark.parametrize("score_with", ["updated", "previous"])
@pytest.mark.parametrize("k", [1, 3])
def test_memel_training_steps_match_reference(score_with, k):
    late, delta = 2, 5.0
    memel = MEmeL(k=k, delta=delta, forget_steps=3, late_start=late, score_with=score_with).train()
    ref = ReferenceMoments(6, forget_steps=3)
    for step, x in enumerate(stream(8, (7, 6))):
        z = x.clone().requires_grad_()
        out = memel(z)
        out.sum().backward()
        want_out, want_grad, want_sel = reference_memel_step(ref, x, k, delta, score_with, late, step)
        changed = out.detach() != x
        assert torch.equal(changed, want_sel & (want_out.float() != x)), step
        torch.testing.assert_close(out.detach().double(), want_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z.grad.double(), want_grad)
        assert memel.step == step + 1
    np.testing.assert_allclose(memel.moments.mean.numpy(), ref.mu, rtol=1e-5, atol=1e-6)


def test_late_start_first_inhibited_batch_is_l_s_plus_one():
    memel = MEmeL(k=1, late_start=3).train()
    for i, x in enumerate(stream(5, (4, 5))):
        out = memel(x)
        assert torch.equal(out, x) == (i < 3), i


def test_eval_is_identity_and_statistics_do_not_move():
    memel = MEmeL(k=1, late_start=0).train()
    feed(memel, stream(3, (4, 5)))
    state = copy.deepcopy(memel.state_dict())
    memel.eval()
    x = torch.randn(4, 5) * 10
    assert memel(x) is x
    for key, value in memel.state_dict().items():
        assert torch.equal(value, state[key]) if torch.is_tensor(value) else value == state[key]


def test_active_in_eval_inhibits_with_frozen_statistics():
    memel = MEmeL(k=1, late_start=0, active_in_eval=True).train()
    feed(memel, stream(3, (4, 5)))
    mean = memel.moments.mean.clone()
    memel.eval()
    x = torch.randn(4, 5) * 10
    out = memel(x)
    assert (out != x).sum() == 4  # one per sample
    assert torch.equal(memel.moments.mean, mean) and memel.step == 3


def test_masked_positions_are_never_selected_nor_in_the_statistics():
    B, L, H = 6, 5, 4
    memel = MEmeL(k=2, late_start=0, forget_steps=2).train()
    ref = ReferenceMoments(L * H, forget_steps=2)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn(B, L, H, generator=g)
        lengths = torch.randint(1, L + 1, (B,), generator=g)
        mask = torch.arange(L)[None, :] < lengths[:, None]  # (B, L) padding mask
        poisoned = x.masked_fill(~mask[..., None], 1e4)  # would dominate phi if it counted
        out = memel(poisoned, mask)
        full = mask[..., None].expand(B, L, H).reshape(B, -1)
        ref.update(x.reshape(B, -1).numpy(), full.numpy())
        assert torch.equal(out[~mask], poisoned[~mask])  # padding untouched
        assert ((out != poisoned) & ~mask[..., None]).sum() == 0
    np.testing.assert_allclose(memel.moments.mean.numpy(), ref.mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(memel.moments.var.numpy(), ref.v, rtol=1e-4, atol=1e-5)


def test_reduce_dims_pools_axes_into_samples():
    B, L, H = 3, 4, 5
    xs = stream(4, (B, L, H))
    pooled = MEmeL(k=1, late_start=1, reduce_dims=(0,)).train()
    flat = MEmeL(k=1, late_start=1).train()
    for x in xs:
        a = pooled(x)
        b = flat(x.reshape(B * L, H)).reshape(B, L, H)
        assert torch.equal(a, b)
    assert pooled.moments.num_neurons == H
    # a middle axis: (B, C, T) with T pooled -> neurons are channels
    mid = MEmeL(k=1, late_start=0, reduce_dims=(1,)).train()
    ref = MEmeL(k=1, late_start=0).train()
    for x in xs:
        a = mid(x)  # S = (L, H), pool H -> neurons are the L positions
        b = ref(x.transpose(1, 2).reshape(B * H, L)).reshape(B, H, L).transpose(1, 2)
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="reduce_dims"):
        MEmeL(reduce_dims=(3,)).train()(torch.randn(2, 3))


def test_variable_shape_equals_padding_with_a_mask():
    H = 3
    var = MEmeL(k=1, late_start=0, variable_shape=True).train()
    padded = MEmeL(k=1, late_start=0).train()
    g = torch.Generator().manual_seed(5)
    for L in (4, 2, 6, 3, 6):
        x = torch.randn(5, L, H, generator=g)
        mask = torch.ones(5, L, dtype=torch.bool)
        out = var(x, mask)
        xp = torch.zeros(5, 6, H)
        xp[:, :L] = x
        mp = torch.zeros(5, 6, dtype=torch.bool)
        mp[:, :L] = True
        outp = padded(xp, mp)
        torch.testing.assert_close(out, outp[:, :L], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.moments.mean, padded.moments.mean)
    torch.testing.assert_close(var.moments.var, padded.moments.var)
    with pytest.raises(ValueError, match="changed from"):
        var(torch.randn(5, 6, H + 1))


def test_fixed_shape_change_is_a_clear_error_naming_the_tap():
    memel = MEmeL(name="blocks.2").train()
    memel(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match=r"blocks\.2.*changed from \(3, 5\) to \(4, 5\).*variable_shape"):
        memel(torch.randn(4, 4, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_dtype_and_float32_statistics(dtype):
    xs = [x.to(dtype) for x in stream(4, (8, 6))]
    half = MEmeL(k=1, late_start=1).train()
    full = MEmeL(k=1, late_start=1).train()
    for x in xs:
        z = x.clone().requires_grad_()
        out = half(z)
        out.float().sum().backward()
        assert out.dtype == dtype and z.grad.dtype == dtype and out.shape == x.shape
        ref = full(x.float())
        torch.testing.assert_close(out.float(), ref.to(dtype).float())
    assert half.moments.mean.dtype == torch.float32
    torch.testing.assert_close(half.moments.mean, full.moments.mean)
    torch.testing.assert_close(half.moments.var, full.moments.var)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="floating-point"):
        MEmeL().train()(torch.ones(2, 3, dtype=torch.long))


def test_state_dict_round_trip_continues_identically():
    xs = stream(8, (5, 4))
    a = MEmeL(k=1, late_start=2, selector="moving_threshold", forget_steps=3).train()
    feed(a, xs[:4])
    b = MEmeL(k=1, late_start=2, selector="moving_threshold", forget_steps=3).train()
    b.load_state_dict(a.state_dict())
    assert b.step == a.step and b.neuron_shape == a.neuron_shape
    for x in xs[4:]:
        assert torch.equal(a(x), b(x))
    assert torch.equal(a.moments.var, b.moments.var) and torch.equal(a.selector.tau, b.selector.tau)


def test_no_trainable_parameters_and_output_keeps_graph():
    memel = MEmeL(late_start=0).train()
    assert list(memel.parameters()) == []
    w = torch.randn(5, 4, requires_grad=True)
    out = memel(torch.randn(3, 5) @ w)
    out.sum().backward()
    assert w.grad is not None


# ---------------------------------------------------------------- metrics
def test_metrics_match_a_direct_computation():
    tau_report, max_share = 2.0, 0.3
    memel = MEmeL(k=2, late_start=1, tau_report=tau_report, max_share=max_share, forget_steps=4).train()
    ref = ReferenceMoments(6, forget_steps=4)
    for step, x in enumerate(stream(4, (10, 6))):
        _, metrics = recorded_step(memel, x)
        ref.update(x.numpy())
        phi = ref.phi(x.numpy())
        sel = reference_topk(phi, 2) if step >= 1 else np.zeros_like(phi, dtype=bool)
        m = {k: float(v) for k, v in metrics.items() if v.dim() == 0}
        assert m["selected_frac"] == pytest.approx(sel.mean(), abs=1e-7)
        assert m["mono_ratio"] == pytest.approx((phi.max(0) > tau_report).mean(), abs=1e-7)
        assert m["phi_mean"] == pytest.approx(phi.mean(), rel=1e-4)
        assert m["phi_max"] == pytest.approx(phi.max(), rel=1e-4)
        kills = sel.sum(0)
        false = kills[kills > max_share * 10].sum()
        assert m["kill_concentration"] == pytest.approx(false / max(kills.sum(), 1), abs=1e-7)
        assert "fkr" not in m  # the labelled False Killing Rate needs labels


def test_metrics_with_a_mask_count_valid_values_only():
    memel = MEmeL(k=1, late_start=0).train()
    x = torch.randn(4, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    _, m = recorded_step(memel, x, mask)
    assert float(m["values"]) == mask.sum() * 2
    assert float(m["kills"]) == 4  # one per sample
    assert float(m["neurons"]) == 6


def test_neurons_without_statistics_are_never_selected_when_scoring_on_old_statistics():
    # score_with="previous": position 3 is padding in batch 1, so it has no statistics when
    # batch 2 is scored; it must not be selected (its phi would be z^2 / (eps * mean v)).
    memel = MEmeL(k=1, late_start=1, score_with="previous").train()
    x1, x2 = torch.randn(4, 4, 3), torch.randn(4, 4, 3) * 0.01
    mask1 = torch.tensor([[1, 1, 1, 0]] * 4)
    memel(x1, mask1)
    x2[:, 3] = 5.0
    out = memel(x2, torch.ones(4, 4))
    assert torch.equal(out[:, 3], x2[:, 3]) and (out != x2).sum() == 4


def test_longer_sequences_than_seen_in_training_work_in_eval_and_previous_mode():
    for score_with in ("previous", "updated"):
        memel = MEmeL(k=1, late_start=0, variable_shape=True, active_in_eval=True, score_with=score_with).train()
        memel(torch.randn(5, 3, 2))
        memel(torch.randn(5, 4, 2))  # longer in training (previous: scored on 3 positions)
        memel.eval()
        x = torch.randn(5, 6, 2)
        out = memel(x)  # longer in eval: new positions are never selected
        assert torch.equal(out[:, 4:], x[:, 4:]) and (out != x).sum() == 5
