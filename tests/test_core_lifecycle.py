"""The step lifecycle (begin_step / end_step), the typed configuration and TapLayout.

A step's metrics cover every call of the tap (a recurrent tap), and are compared with a
float64 computation over the concatenated calls; ``late_start`` counts steps (training
batches), ``forget_steps`` statistics updates (calls): docs/method.md §2.4 and §6."""
import numpy as np
import pytest
import torch

from memel_lightning.inhibition import MEmeL, MEmeLConfig, MEmeLConfigError, TapLayout
from reference import ReferenceMoments, reference_topk


def batches(steps, calls, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(*shape, generator=g) * (1 + 0.3 * t) + 0.2 * s for t in range(calls)] for s in range(steps)]


@pytest.mark.parametrize("calls", [1, 3])
def test_metrics_of_a_step_cover_all_calls_of_the_tap(calls):
    """T calls per batch (a recurrent tap): each call is a statistics update and is scored
    on the statistics after it; the step's metrics are over the T calls together."""
    tau_report, max_share, k = 2.0, 0.35, 2
    memel = MEmeL(k=k, late_start=1, forget_steps=4, tau_report=tau_report, max_share=max_share).train()
    ref = ReferenceMoments(6, forget_steps=4)
    seen_concentration = False
    for step, xs in enumerate(batches(4, calls, (10, 6))):
        memel.begin_step(record=True)
        phis, sels = [], []
        for x in xs:
            memel(x)
            ref.update(x.numpy())  # one statistics update per call
            phi = ref.phi(x.numpy())
            phis.append(phi)
            sels.append(reference_topk(phi, k) if step >= 1 else np.zeros_like(phi, dtype=bool))
        m = memel.end_step()
        phi, sel = np.concatenate(phis), np.concatenate(sels)
        kills = sel.sum(0)
        valid = np.full(6, phi.shape[0])
        conc = kills[kills > max_share * valid].sum() / max(kills.sum(), 1)
        assert float(m["selected_frac"]) == pytest.approx(sel.mean(), abs=1e-7)
        assert float(m["mono_ratio"]) == pytest.approx((phi.max(0) > tau_report).mean(), abs=1e-7)
        assert float(m["phi_mean"]) == pytest.approx(phi.mean(), rel=1e-4)
        assert float(m["phi_max"]) == pytest.approx(phi.max(), rel=1e-4)
        assert float(m["kill_concentration"]) == pytest.approx(conc, abs=1e-7)
        np.testing.assert_array_equal(m["kills_per_neuron"].numpy(), kills)
        assert float(m["values"]) == phi.size
        seen_concentration |= 0 < conc < 1
    assert memel.step == 4  # steps, not calls
    assert int(memel.moments.steps[0]) == 4 * calls  # forget_steps counts calls
    assert seen_concentration  # the check covered a kill concentration strictly between 0 and 1


@pytest.mark.parametrize("calls", [1, 4])
def test_late_start_10_first_inhibits_the_11th_batch_also_for_a_recurrent_tap(calls):
    memel = MEmeL(k=1, late_start=10).train()
    first = None
    for step, xs in enumerate(batches(13, calls, (5, 4))):
        memel.begin_step(record=False)
        changed = [bool((memel(x) != x).any()) for x in xs]
        memel.end_step()
        assert len(set(changed)) == 1, step  # every call of a step is inhibited, or none
        if changed[0] and first is None:
            first = step + 1  # 1-based batch number
    assert first == 11


def test_a_forward_outside_begin_end_is_its_own_step():
    memel = MEmeL(k=1, late_start=2).train()
    xs = [torch.randn(4, 3) for _ in range(3)]
    assert [bool((memel(x) != x).any()) for x in xs] == [False, False, True]
    assert memel.step == 3
    memel.eval()
    memel(torch.randn(4, 3))
    assert memel.step == 3  # eval calls are not training batches


def test_lifecycle_misuse_is_a_clear_error():
    memel = MEmeL(name="t")
    with pytest.raises(RuntimeError, match="end_step called without begin_step"):
        memel.end_step()
    memel.begin_step()
    with pytest.raises(RuntimeError, match="begin_step called twice"):
        memel.begin_step()


def test_end_step_without_record_is_empty_and_histogram_samples_phi():
    memel = MEmeL(k=1, late_start=0).train()
    memel.begin_step(record=False)
    memel(torch.randn(4, 3))
    assert memel.end_step() == {}
    memel.begin_step(record=False, histogram=True)
    memel(torch.randn(4, 3))
    memel(torch.randn(4, 3))
    assert memel.end_step()["phi_sample"].numel() == 24


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("options,message", [
    ({"delta": float("nan")}, "memel.delta must be a finite number, got nan"),
    ({"delta": float("inf")}, "memel.delta must be a finite number, got inf"),
    ({"eps": 0.0}, r"memel.eps must be in \(0, inf\), got 0.0"),
    ({"eps": -1e-3}, r"memel.eps must be in \(0, inf\)"),
    ({"k": 1.5}, "memel.k must be an integer >= 1, got 1.5"),
    ({"k": 0}, "memel.k must be an integer >= 1, got 0"),
    ({"k": True}, "memel.k must be an integer"),
    ({"forget_steps": 0}, "memel.forget_steps must be an integer >= 1"),
    ({"late_start": -1}, "memel.late_start must be an integer >= 0"),
    ({"target_ratio": 1.0}, r"memel.target_ratio must be in \(0, 1\)"),
    ({"threshold_lr": 0.0}, r"memel.threshold_lr must be in \(0, inf\)"),
    ({"max_share": 1.5}, r"memel.max_share must be in \[0, 1\]"),
    ({"reg_lambda": -1.0}, r"memel.reg_lambda must be in \[0, inf\)"),
    ({"tau_report": float("nan")}, "memel.tau_report must be a finite number"),
    ({"selector": "top1"}, r"memel.selector must be one of \['topk', 'threshold', 'moving_threshold'\], got 'top1'"),
    ({"strategy": "reversed"}, "memel.strategy must be one of"),
    ({"score_with": "old"}, "memel.score_with must be one of"),
    ({"nonfinite": "ignore"}, "memel.nonfinite must be one of"),
    ({"selector": "threshold"}, "memel.tau must be set for selector='threshold'"),
    ({"tau": float("nan"), "selector": "threshold"}, "memel.tau must be a finite number"),
    ({"reduce_dims": (0, 0)}, "memel.reduce_dims must be distinct axes"),
    ({"reduce_dims": (-1,)}, "memel.reduce_dims must be an integer >= 0"),
    ({"active_in_eval": "yes"}, "memel.active_in_eval must be true or false"),
])
def test_invalid_settings_are_refused_with_a_one_line_message(options, message):
    with pytest.raises(MEmeLConfigError, match=message) as info:
        MEmeLConfig(**options)
    assert "\n" not in str(info.value)
    with pytest.raises(MEmeLConfigError, match=message):
        MEmeL(**options)  # the keyword options go through the same validation


def test_unknown_setting_is_refused():
    with pytest.raises(MEmeLConfigError, match=r"unknown memel setting\(s\) \['kk'\]"):
        MEmeL(kk=1)


def test_integer_valued_floats_are_accepted_and_config_resolves():
    memel = MEmeL(MEmeLConfig(k=3), k=2.0, threshold_lr=0.2, selector="moving_threshold")
    assert memel.config.k == 2 and isinstance(memel.config.k, int)
    assert memel.selector.lr == 0.2  # the moving threshold's step size is a setting


def test_k_larger_than_the_taps_neurons_is_refused_at_the_first_batch():
    memel = MEmeL(k=5, name="enc").train()
    with pytest.raises(MEmeLConfigError, match=r"memel.k=5 is larger than the 4 neurons per sample of tap 'enc'"):
        memel(torch.randn(3, 4))


# ---------------------------------------------------------------- layout
def test_tap_layout_round_trip_and_mask():
    layout = TapLayout((1,))
    z = torch.randn(2, 3, 4, 5)  # B, S0, S1 (pooled), S2
    z2 = layout.to_samples(z)
    assert z2.shape == (2 * 4, 15) and layout.samples_per_item(z) == 4 and layout.neuron_shape(z) == (3, 5)
    # row (b, s1), neuron (s0, s2)
    assert torch.equal(z2[1 * 4 + 2].reshape(3, 5), z[1, :, 2, :])
    assert torch.equal(layout.restore(z2, z), z)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]]).bool()  # (B, S0)
    m2 = layout.mask_to_samples(mask, z)
    assert m2.shape == z2.shape and torch.equal(m2[4].reshape(3, 5)[:, 0], mask[1])
    with pytest.raises(ValueError, match="reduce_dims=\\(3,\\)"):
        TapLayout((3,), "t").to_samples(z)
