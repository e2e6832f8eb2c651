"""The cost model: its roofline arithmetic, that it charges the model and the inhibition
exactly (model = the run without taps; inhibition = MEmeL counted alone), and its CLI."""
from __future__ import annotations

import os
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import cost_model as cm  # noqa: E402
from dispatch_counter import DispatchCounter, OpRecord  # noqa: E402


def rec(bytes_: int = 0, flops: int = 0, dtype=torch.bfloat16, kernels: int = 1) -> OpRecord:
    return OpRecord("model", "forward", "aten::x", kernels, bytes_, 0, flops, dtype)


def test_roofline_arithmetic():
    hw = cm.Hardware(hbm_bytes_per_s=1e12, hbm_eff=0.5, bf16_flops_per_s=1e15, mm_eff=0.5, launch_s=1e-6)
    assert hw.op_time(rec(bytes_=10**7)) == pytest.approx(10**7 / 5e11)            # memory bound
    assert hw.op_time(rec(bytes_=10, flops=10**12)) == pytest.approx(10**12 / 5e14)  # compute bound
    assert hw.op_time(rec(flops=10**12, dtype=torch.float32)) == pytest.approx(10**12 / 2.5e14)
    assert hw.op_time(rec(bytes_=100)) == pytest.approx(1e-6)                        # launch floor
    assert hw.op_time(rec(bytes_=10**7), additive=True) == pytest.approx(10**7 / 5e11 + 1e-6)
    assert hw.op_time(rec(bytes_=10**7, kernels=0)) == 0.0


def kernel_records(records, region=None):
    return [(r.op, r.phase, r.kernels, r.bytes_read, r.bytes_written, r.flops)
            for r in records if r.kernels and (region is None or r.region == region)]


@pytest.fixture(scope="module")
def tiny():
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    torch.manual_seed(0)
    all_, mid2 = cm.pythia(fake, "tiny", 2, seq=16)
    return fake, {"all": all_, "mid2": mid2}


@pytest.mark.parametrize("method", list(cm.METHODS))
def test_model_region_is_the_untapped_run(tiny, method):
    fake, works = tiny
    base = cm.measure(works["all"], None, fake)
    tapped = cm.measure(works["all"], method, fake)
    assert {r.region for r in base.records} == {"model"}
    assert kernel_records(tapped.records, "model") == kernel_records(base.records)


@pytest.mark.parametrize("method", list(cm.METHODS))
def test_inhibition_region_is_memel_counted_alone(tiny, method):
    """Per tap, the inhibition charged inside the model equals one MEmeL's forward+backward
    counted on its own, on a tensor of the tap's shape (the model's GELU output)."""
    fake, works = tiny
    work = works["all"]
    tapped = cm.measure(work, method, fake)
    memel = cm.make_memel({**cm.METHODS[method], **work.memel_options}, work.tap_shape, torch.bfloat16, False)
    cm._set_recording_off([memel])
    counter = DispatchCounter()
    counter.attribute(memel, cm.INHIBITION)
    with fake:
        z0 = torch.randn(work.tap_shape, dtype=torch.bfloat16, requires_grad=True)
        z = z0 * 1  # a non-leaf, like a layer's output
        grad = torch.randn(work.tap_shape, dtype=torch.bfloat16)
        with counter:
            memel(z).backward(grad)
    alone = kernel_records(counter.records, cm.INHIBITION)
    # the model runs every tap's forward before any backward: compare as multisets
    assert alone and sorted(kernel_records(tapped.records, cm.INHIBITION)) == sorted(alone * len(work.taps))


def test_placements_scale_with_the_number_of_taps(tiny):
    fake, works = tiny
    hw = cm.Hardware()
    all_, mid2 = (cm.summarize(cm.measure(works[p], "memel", fake), hw) for p in ("all", "mid2"))
    assert (all_.taps, mid2.taps) == (2, 2)  # the tiny preset has 2 layers: both placements tap both
    assert all_.inh_kernels == mid2.inh_kernels and all_.model_kernels == mid2.model_kernels
    assert all_.overhead == pytest.approx(100 * all_.inh_ms / all_.model_ms)


def test_cli_table_and_markdown(tmp_path, capsys):
    out = tmp_path / "cost.md"
    rows = cm.main(["--models", "pythia-tiny", "--seq", "8", "--batch", "1", "--markdown", str(out), "--breakdown"])
    assert [(r.model, r.method, r.taps) for r in rows] == [
        ("tiny/all", "memel", 2), ("tiny/all", "l2e", 2), ("tiny/mid2", "memel", 2), ("tiny/mid2", "l2e", 2)]
    for r in rows:
        assert r.model_kernels > 0 and r.inh_kernels > 0 and r.overhead > 0
    assert rows[1].inh_kernels > rows[0].inh_kernels  # L2E runs more kernels than top-1 (table in the docs)
    text = out.read_text()
    assert text.startswith("| model/taps | method |") and text.count("\n| tiny/") == 4
    printed = capsys.readouterr().out
    assert "Assumptions:" in text and "Assumptions:" in printed
    assert "tiny/all memel, per tap:" in printed and "aten::where" in printed  # the breakdown


def test_cli_rejects_bad_efficiency():
    with pytest.raises(SystemExit):
        cm.main(["--models", "pythia-tiny", "--hbm-eff", "0"])
