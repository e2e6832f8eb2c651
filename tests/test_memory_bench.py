"""The saved-for-backward memory measurement: exact byte counts on tiny taps, fake = real."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import memory  # noqa: E402


def test_saved_storages_are_counted_once():
    saved = memory.SavedTensors()
    x = torch.randn(4, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        v = x.view(32)
        y = (v * v).sum()  # mul saves v twice: one storage, that of x
    assert saved.bytes == 4 * 8 * 4 and len(saved.storages) == 1
    del y


@pytest.mark.parametrize("selector", list(memory.SELECTORS))
def test_token_layout_exact_bytes(selector):
    n, f = 2 * 8, 16  # reduce_dims=[0]: 16 samples (tokens) of 16 neurons
    shape = (2, 8, f)
    for strategy in ("reverse", "mean_nograd", "mean_passthrough"):
        row = memory.measure("pythia-410m", selector, strategy, shape=shape)
        assert row.extra_bytes == n * f  # the bool selection, 1 byte per element
        assert row.bytes_per_element == 1.0
    # regularize also keeps the running mean and the per-neuron coefficient, float32 (F,)
    row = memory.measure("pythia-410m", selector, "regularize", shape=shape)
    assert row.extra_bytes == n * f + 2 * f * 4
    assert memory.measure("pythia-410m", selector, "none", shape=shape).extra_bytes == 0


def test_sample_layout_and_fake_equals_real():
    shape = (2, 3, 4, 8)  # swin layout: every value of a sample is a neuron (F = 96)
    for strategy in ("reverse", "regularize"):
        fake = memory.measure("swin-t", "topk", strategy, shape=shape)
        real = memory.measure("swin-t", "topk", strategy, shape=shape, fake=False)
        assert fake.extra_bytes == real.extra_bytes
    assert real.extra_bytes == 2 * 96 + 2 * 96 * 4  # regularize, the last one
    assert sorted(real.extra_tensors) == ["bool[2, 96]", "float32[96]", "float32[96]"]


def test_cli_writes_markdown(tmp_path, capsys):
    out = tmp_path / "mem.md"
    rows = memory.main(["--taps", "pythia-410m", "--selectors", "topk", "--strategies", "reverse",
                        "--markdown", str(out)])
    assert len(rows) == 1 and rows[0].bytes_per_element == pytest.approx(1.0)
    text = out.read_text()
    assert text.startswith("| tap | selector | strategy |") and "| pythia-410m | topk | reverse | 1.000 |" in text
    assert "target <= 1 byte/element" in capsys.readouterr().out
