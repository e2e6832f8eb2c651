"""The monitoring pieces on their own: labels, layout, histories, images, HParams,
each written with a plain SummaryWriter and read back from the event file."""
from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from torch.utils.tensorboard import SummaryWriter

from memel_lightning.monitoring import (
    Dashboard, StepHistory, memel_hparams, memel_layout, nowcast_frames_image, phi_histogram_image,
    short_labels, step_heatmap,
)
from memel_lightning.monitoring.phi_histogram import log10_phi
from tb_views import accumulator, hparams, images, layout

MODULES = ["labels", "layout", "history", "figure", "heatmap", "phi_histogram", "frames", "hparams", "dashboard",
           "lightning_board"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"memel_lightning.monitoring.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------- labels
@pytest.mark.parametrize("taps, expected", [
    (["model.layers.2.blocks.0", "model.layers.2.blocks.3"], ["blocks.0", "blocks.3"]),
    (["bert.encoder.layer.4.output", "bert.encoder.layer.11.output"], ["layer.4", "layer.11"]),
    ([f"net.{s}.{i}.cell.candidate" for s in ("encoder", "forecaster") for i in range(3)],
     ["encoder.0", "encoder.1", "encoder.2", "forecaster.0", "forecaster.1", "forecaster.2"]),
    (["hidden.0", "hidden.1"], ["hidden.0", "hidden.1"]),
    (["a.b", "a.b.c"], ["b", "b.c"]),           # one name is a prefix of another: both keep a part
    (["fc1", "fc2"], ["fc1", "fc2"]),
    (["model.mlp"], ["mlp"]),                   # a single tap: its last part
    (["model.layers.7"], ["layers.7"]),         # ... with context when that part is an index
])
def test_short_labels(taps, expected):
    assert list(short_labels(taps).values()) == expected


def test_short_label_aliases_and_errors():
    taps = ["m.blocks.0", "m.blocks.1"]
    assert short_labels(taps, {"m.blocks.1": "late"}) == {"m.blocks.0": "blocks.0", "m.blocks.1": "late"}
    with pytest.raises(ValueError, match="unknown taps \\['m.blocks.9'\\]"):
        short_labels(taps, {"m.blocks.9": "x"})
    with pytest.raises(ValueError, match="label more than one tap"):
        short_labels(taps, {"m.blocks.1": "blocks.0"})
    with pytest.raises(ValueError, match="no '/'"):
        short_labels(taps, {"m.blocks.1": "a/b"})


# ---------------------------------------------------------------------- layout
def test_layout_charts_every_metric_over_every_tap():
    lay = memel_layout(["blocks.0", "blocks.1"], ["phi_max", "mono_ratio"], ["val_loss", "val_acc", "train_loss"])
    assert list(lay["MEmeL"]) == ["mono_ratio", "phi_max"]  # display order, not argument order
    assert lay["MEmeL"]["phi_max"] == ["Multiline", ["^memel/blocks\\.0/phi_max$", "^memel/blocks\\.1/phi_max$"]]
    assert lay["MEmeL"]["mono_ratio"][1][-1] == "^memel/mono_ratio$"
    assert lay["task (validation)"] == {"loss": ["Multiline", ["^val_loss$", "^train_loss$"]],
                                        "acc": ["Multiline", ["^val_acc$"]]}
    with pytest.raises(ValueError, match="no MEmeL chart for metrics \\['loss'\\]"):
        memel_layout(["a"], ["loss"])


def test_layout_regexes_match_only_their_tags():
    import re

    (regex,) = memel_layout(["blocks.1"], ["mono_ratio"])["MEmeL"]["mono_ratio"][1][:1]
    assert re.search(regex, "memel/blocks.1/mono_ratio")
    assert not re.search(regex, "memel/blocksX1/mono_ratio")  # the dot is literal
    assert not re.search(regex, "memel/blocks.11/mono_ratio")


# ---------------------------------------------------------------------- history
def test_step_history_halves_when_full():
    h = StepHistory(rows=1, max_columns=4)
    for step in range(1, 10):
        h.append(step, [float(step)])
    # 4 full -> [1.5, 3.5, 5, 6] ... then 7, and again at 8: [2.5, 5.5, 7, 8], then 9
    assert len(h) <= 4 and h.steps[0] == 1 and h.steps[-1] == 9
    values = h.matrix()[0]
    assert values[-1] == 9.0 and values.tolist() == sorted(values.tolist())
    hmax = StepHistory(rows=1, max_columns=2, merge="max")
    for step, v in [(0, 1.0), (1, 5.0), (2, 2.0)]:
        hmax.append(step, [v])
    assert hmax.steps == [0, 2] and hmax.matrix()[0].tolist() == [5.0, 2.0]
    with pytest.raises(ValueError, match="steps must increase"):
        hmax.append(2, [0.0])
    with pytest.raises(ValueError, match="expects 1 values per step, got 2"):
        hmax.append(3, [0.0, 1.0])


# ---------------------------------------------------------------------- images
def _count_near(img: np.ndarray, rgb: np.ndarray, tol: int = 6) -> int:
    return int((np.abs(img.astype(int) - rgb.astype(int)).max(axis=-1) <= tol).sum())


def _viridis(v: float) -> np.ndarray:
    return np.round(np.array(colormaps["viridis"](v)[:3]) * 255).astype(np.uint8)


def test_heatmap_uses_a_fixed_zero_one_scale():
    img = step_heatmap(np.array([[0.2, 0.2], [0.3, 0.3]]), [10, 20], "t", "mono_ratio", ["a", "b"])
    cells = img.shape[0] * img.shape[1] // 20  # the cells fill most of the plot; the colour bar is thin
    assert _count_near(img, _viridis(0.2)) > cells and _count_near(img, _viridis(0.3)) > cells
    # an auto-scaled map would paint its cells with the ends of the colour map
    assert _count_near(img, _viridis(0.0), tol=2) < cells and _count_near(img, _viridis(1.0), tol=2) < cells
    with pytest.raises(ValueError, match="2 row labels for 1 rows"):
        step_heatmap(np.zeros((1, 2)), [1, 2], "t", "v", ["a", "b"])
    with pytest.raises(ValueError, match="needs a \\(rows, 3\\) matrix"):
        step_heatmap(np.zeros((1, 2)), [1, 2, 3], "t", "v")


def test_log10_phi_matches_numpy():
    phi = torch.tensor([0.0, 1e-8, 0.5, 9.0, 1e4, float("inf"), float("nan")])
    expected = np.log10(np.clip(np.array([0.0, 1e-8, 0.5, 9.0, 1e4]), 1e-6, None))
    assert np.allclose(log10_phi(phi).numpy(), expected, atol=1e-6)


def test_phi_histogram_and_frames_validate_input():
    with pytest.raises(ValueError, match="at least one tap"):
        phi_histogram_image({}, 9.0, "t")
    with pytest.raises(ValueError, match="tau_report must be a positive finite number, got 0"):
        phi_histogram_image({"a": torch.rand(10)}, 0.0, "t")
    with pytest.raises(ValueError, match="observed \\(3, 8, 8\\) and predicted \\(2, 8, 8\\) frames differ"):
        nowcast_frames_image(torch.rand(2, 8, 8), torch.rand(3, 8, 8), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="inputs frames must be \\(T, H, W\\)"):
        nowcast_frames_image(torch.rand(8, 8), torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    img = nowcast_frames_image(torch.rand(12, 1, 8, 8), torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8), max_frames=6)
    assert img.ndim == 3 and img.shape[1] > img.shape[0]  # rows of frames, time left to right


def test_memel_hparams_show_the_settings_that_matter():
    from memel_lightning.monitoring.hparams import final_metric_tags

    base = {"selector": "topk", "k": 1, "target_ratio": 0.02, "strategy": "reverse", "delta": 1.0,
            "late_start": 10, "tau": None, "reg_lambda": 1e-3, "eps": 0.01}
    assert memel_hparams(base, ["b0"]) == {
        "memel/selector": "topk", "memel/k": 1, "memel/target_ratio": 0.02, "memel/strategy": "reverse",
        "memel/delta": 1.0, "memel/late_start": 10, "memel/taps": "b0"}
    reg = memel_hparams(base | {"selector": "threshold", "tau": 9.0, "strategy": "regularize"}, ["b0"])
    assert reg["memel/tau"] == 9.0 and reg["memel/reg_lambda"] == 1e-3 and "memel/eps" not in reg
    logged = ["train_loss", "val_loss", "val_acc", "memel/kill_concentration", "memel/fkr", "memel/mono_ratio",
              "memel/b1/mono_ratio", "memel/b0/mono_ratio", "memel/b0/phi_max"]
    assert final_metric_tags(logged, ["b0", "b1"]) == [
        "val_acc", "val_loss", "memel/mono_ratio", "memel/fkr", "memel/b0/mono_ratio", "memel/b1/mono_ratio",
        "memel/kill_concentration"]


# ---------------------------------------------------------------------- dashboard -> event file
def test_dashboard_writes_layout_images_histograms_and_hparams(tmp_path):
    labels = {"m.blocks.0": "blocks.0", "m.blocks.1": "blocks.1"}
    board = Dashboard(labels, tau_report=9.0, image_every_n_steps=20, kills_tap="blocks.1")
    writer = SummaryWriter(str(tmp_path))
    board.write_layout(writer, ["mono_ratio", "fkr"], ["val_acc"])
    assert not board.images_due(0)  # nothing recorded yet: no empty image
    expected = {}
    for step in range(10, 60, 10):
        metrics = {"m.blocks.0/mono_ratio": torch.tensor(step / 100), "m.blocks.1/mono_ratio": 0.5,
                   "m.blocks.1/kills_per_neuron": torch.tensor([0.0, 8.0, 2.0]),
                   "m.blocks.1/values": torch.tensor(30.0), "m.blocks.1/neurons": torch.tensor(3.0)}
        board.record(step, metrics)
        expected[step] = step / 100
        writer.add_scalar("memel/blocks.0/mono_ratio", step / 100, step)
        if board.images_due(step):
            board.write_images(writer, step)
    assert board.mono.matrix()[0].tolist() == pytest.approx(list(expected.values()))
    assert board.kills.matrix()[:, 0].tolist() == pytest.approx([0.0, 0.8, 0.2])  # kills / 10 rows
    board.write_phi(writer, 50, {"m.blocks.0": torch.rand(500) * 30, "m.blocks.1": None},
                    {"m.blocks.0/mono_ratio": 0.25})
    writer.add_scalar("val_acc", 0.75, 50)
    tags = board.write_hparams(writer, 50, memel_hparams({"selector": "topk", "k": 1}, list(labels.values())),
                               ["val_acc", "memel/blocks.0/mono_ratio", "train_loss"])
    writer.close()
    assert tags == ["val_acc", "memel/blocks.0/mono_ratio"]

    acc = accumulator(tmp_path)
    lay = layout(acc)
    assert lay["MEmeL"]["mono_ratio"] == ["^memel/blocks\\.0/mono_ratio$", "^memel/blocks\\.1/mono_ratio$",
                                         "^memel/mono_ratio$"]
    assert lay["task (validation)"] == {"acc": ["^val_acc$"]}
    # first image at the first recorded step, then every 20 steps
    assert [s for s, _ in images(acc, "memel/heatmap/mono_ratio")] == [10, 30, 50]
    assert [s for s, _ in images(acc, "memel/heatmap/kills")] == [10, 30, 50]
    assert [s for s, _ in images(acc, "memel/phi_histogram")] == [50]
    assert acc.Tags()["histograms"] == ["memel/blocks.0/log10_phi"]
    values, metric_tags = hparams(acc)
    assert values == {"memel/selector": "topk", "memel/k": 1.0, "memel/taps": "blocks.0,blocks.1"}
    assert metric_tags == ["val_acc", "memel/blocks.0/mono_ratio"]
    assert "hp_metric" not in acc.Tags()["scalars"]


def test_dashboard_rejects_an_unknown_kills_tap():
    with pytest.raises(ValueError, match="kills_tap 'x' is not a tap"):
        Dashboard({"a.b": "b"}, 9.0, kills_tap="x")
    with pytest.raises(ValueError, match="image_every_n_steps must be >= 1"):
        Dashboard({"a.b": "b"}, 9.0, image_every_n_steps=0)
    board = Dashboard({"a.b": "b"}, 9.0)
    board.record(1, {"other/mono_ratio": 0.5})  # no value for any tap: nothing recorded
    assert len(board.mono) == 0 and not board.images_due(1)
