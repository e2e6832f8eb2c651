"""Read the dashboard's views back from TensorBoard event files (tests only)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata as layout_metadata
from tensorboard.plugins.hparams import plugin_data_pb2


def accumulator(log_dir: str | Path) -> EventAccumulator:
    """Everything (no sampling) of the one run directory holding event files under ``log_dir``."""
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {log_dir}")
    runs = {f.parent for f in files}
    assert len(runs) == 1, f"expected one run directory, got {sorted(map(str, runs))}"
    everything = {"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}
    acc = EventAccumulator(str(files[0].parent), size_guidance=everything)
    acc.Reload()
    return acc


def layout(acc: EventAccumulator) -> dict[str, dict[str, list[str]]]:
    """The last Custom Scalars layout: ``{category: {chart title: [tag regex, ...]}}``."""
    events = acc.Tensors(layout_metadata.CONFIG_SUMMARY_TAG)
    proto = layout_pb2.Layout.FromString(events[-1].tensor_proto.string_val[0])
    return {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in proto.category}


def images(acc: EventAccumulator, tag: str) -> list[tuple[int, np.ndarray]]:
    """``[(step, (H, W, 3) uint8)]`` of an image tag."""
    return [(e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))) for e in acc.Images(tag)]


def hparams(acc: EventAccumulator) -> tuple[dict[str, object], list[str]]:
    """The HParams plugin's session hyperparameters and the experiment's metric tags."""
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return values, [m.name.tag for m in experiment.metric_infos]
