"""The TensorBoard dashboard of a MEmeL run: what to draw from the steps' metrics, and when."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from torch import Tensor

from .heatmap import step_heatmap
from .history import StepHistory
from .hparams import final_metric_tags, write_hparams
from .layout import MEMEL_CHARTS, memel_layout
from .phi_histogram import log10_phi, phi_histogram_image

Number = Union[float, Tensor]
HEATMAP_TAG = "memel/heatmap/mono_ratio"
KILLS_TAG = "memel/heatmap/kills"
PHI_TAG = "memel/phi_histogram"


class Dashboard:
    """Turns the per-step MEmeL metrics into TensorBoard views (``writer``: a
    ``torch.utils.tensorboard.SummaryWriter``, e.g. ``TensorBoardLogger.experiment``):

    - :meth:`write_layout`: Custom Scalars, one multi-line chart per metric over taps;
    - :meth:`record` + :meth:`write_images`: the layer x step ``mono_ratio`` heatmap
      (fixed 0-1 scale) and, for ``kills_tap``, the neuron x step map of the share of
      samples on which each neuron was killed, refreshed every ``image_every_n_steps``;
    - :meth:`write_phi`: ``log10(phi)`` histograms (TensorBoard histograms plus an
      image with the ``tau_report`` line);
    - :meth:`write_hparams`: the settings with the final metrics.

    ``labels``: ``{tap: short label}``; metrics arrive as ``{"<tap>/<metric>": value}``
    (``TapSet.end_step``'s keys) and are logged under ``memel/<label>/<metric>``.

    Example:
        >>> board = Dashboard({"m.blocks.0": "blocks.0", "m.blocks.1": "blocks.1"}, tau_report=9.0)
        >>> board.record(10, {"m.blocks.0/mono_ratio": 0.5, "m.blocks.1/mono_ratio": 0.25})
        >>> board.heatmap().shape[2]
        3
    """

    def __init__(
        self,
        labels: Mapping[str, str],
        tau_report: float,
        image_every_n_steps: int = 200,
        kills_tap: Optional[str] = None,
        max_columns: int = 512,
    ) -> None:
        if image_every_n_steps < 1:
            raise ValueError(f"image_every_n_steps must be >= 1, got {image_every_n_steps}")
        self.labels = dict(labels)
        self.taps = list(self.labels)
        self.tau_report = float(tau_report)
        self.image_every_n_steps = int(image_every_n_steps)
        self.kills_tap = self._tap_named(kills_tap) if kills_tap is not None else None
        self.mono = StepHistory(len(self.taps), max_columns)
        self.kills: Optional[StepHistory] = None  # sized at the first record (neurons unknown before)
        self._max_columns = max_columns
        self.last_image_step: Optional[int] = None

    def _tap_named(self, name: str) -> str:
        for tap, label in self.labels.items():
            if name in (tap, label):
                return tap
        raise ValueError(f"kills_tap {name!r} is not a tap; taps (labels): {self.labels}")

    # ------------------------------------------------------------------ layout
    def write_layout(self, writer: Any, metrics: Iterable[str] = MEMEL_CHARTS, task_tags: Sequence[str] = ()) -> dict:
        """Write (or rewrite: TensorBoard shows the last) the Custom Scalars layout."""
        layout = memel_layout([self.labels[t] for t in self.taps], metrics, task_tags)
        writer.add_custom_scalars(layout)
        return layout

    # ------------------------------------------------------------------ steps
    def record(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Keep a recorded step's per-tap ``mono_ratio`` (and ``kills_tap``'s kills)."""
        column = [_float(metrics.get(f"{tap}/mono_ratio", math.nan)) for tap in self.taps]
        if all(math.isnan(v) for v in column):
            return
        self.mono.append(step, column)
        if self.kills_tap is not None:
            share = _kill_share(metrics, self.kills_tap)
            if share is not None:
                if self.kills is None:
                    self.kills = StepHistory(share.size, self._max_columns, merge="max")
                self.kills.append(step, share)

    def images_due(self, step: int) -> bool:
        """True every ``image_every_n_steps`` steps once something is recorded."""
        if not len(self.mono):
            return False
        return self.last_image_step is None or step - self.last_image_step >= self.image_every_n_steps

    def heatmap(self) -> np.ndarray:
        return step_heatmap(self.mono.matrix(), self.mono.steps,
                            f"mono_ratio per layer (tau_report = {self.tau_report:g}), fixed 0-1 scale",
                            "mono_ratio", [self.labels[t] for t in self.taps])

    def kill_map(self) -> Optional[np.ndarray]:
        if self.kills is None or not len(self.kills):
            return None
        return step_heatmap(self.kills.matrix(), self.kills.steps,
                            f"{self.labels[self.kills_tap]}: share of samples killing each neuron",
                            "kill share", row_axis="neuron")

    def write_images(self, writer: Any, step: int) -> bool:
        """The heatmap (and kill map) at ``step``; False when nothing is recorded yet."""
        if not len(self.mono):
            return False
        writer.add_image(HEATMAP_TAG, self.heatmap(), step, dataformats="HWC")
        kills = self.kill_map()
        if kills is not None:
            writer.add_image(KILLS_TAG, kills, step, dataformats="HWC")
        self.last_image_step = step
        return True

    def write_phi(self, writer: Any, step: int, samples: Mapping[str, Tensor],
                  metrics: Optional[Mapping[str, Any]] = None, title: str = "") -> None:
        """``log10(phi)`` of each tap's sample (``{tap: phi values}``) as TensorBoard
        histograms ``memel/<label>/log10_phi`` and one image with the tau_report line."""
        samples = {t: s for t, s in samples.items() if s is not None and s.numel() > 0}
        if not samples:
            return
        for tap, sample in samples.items():
            writer.add_histogram(f"memel/{self.labels[tap]}/log10_phi", log10_phi(sample), step)
        mono = None
        if metrics is not None:
            mono = {self.labels[t]: _float(metrics[f"{t}/mono_ratio"]) for t in samples if f"{t}/mono_ratio" in metrics}
        image = phi_histogram_image({self.labels[t]: s for t, s in samples.items()}, self.tau_report,
                                    title or f"step {step}", mono)
        writer.add_image(PHI_TAG, image, step, dataformats="HWC")

    # ------------------------------------------------------------------ end
    def write_hparams(
        self, writer: Any, step: int, hparams: Mapping[str, Any], logged_tags: Iterable[str]
    ) -> list[str]:
        """HParams: ``hparams`` with the final values of the logged metrics that matter."""
        tags = final_metric_tags(logged_tags, [self.labels[t] for t in self.taps])
        if tags:
            write_hparams(writer, hparams, tags, step)
        return tags


def _float(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _kill_share(metrics: Mapping[str, Any], tap: str) -> Optional[np.ndarray]:
    """Per neuron: kills / sample rows (values per neuron), in [0, 1]."""
    kills = metrics.get(f"{tap}/kills_per_neuron")
    values, neurons = metrics.get(f"{tap}/values"), metrics.get(f"{tap}/neurons")
    if kills is None or values is None or neurons is None or _float(neurons) <= 0:
        return None
    kills = kills.detach().double().cpu().numpy() if isinstance(kills, Tensor) else np.asarray(kills, dtype=np.float64)
    rows = _float(values) / _float(neurons)
    return kills / max(rows, 1.0)
