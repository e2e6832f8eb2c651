"""The dashboard on a Lightning trainer: its TensorBoard loggers, on rank zero."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from .dashboard import Dashboard
from .hparams import memel_hparams
from .layout import MEMEL_CHARTS


class TrainerBoard:
    """Drives a :class:`Dashboard` for every ``TensorBoardLogger`` of a trainer (rank
    zero only; other loggers get the scalars through Lightning, not these views).

    :meth:`setup` turns off Lightning's ``hp_metric = -1`` placeholder (the real
    HParams, with final metrics, are written by :meth:`finish`); :meth:`start` writes
    the Custom Scalars layout, :meth:`after_validation` adds the task's validation
    metrics to it once they are logged; :meth:`step` feeds recorded steps (images every
    ``image_every_n_steps``), :meth:`phi` the log10(phi) histograms.

    Example:
        >>> board = TrainerBoard({"net.0": "0"}, {"selector": "topk", "k": 1}, tau_report=9.0)
        >>> board.dashboard.labels
        {'net.0': '0'}
    """

    def __init__(
        self,
        labels: Mapping[str, str],
        settings: Any,
        tau_report: float,
        image_every_n_steps: int = 200,
        kills_tap: Optional[str] = None,
    ) -> None:
        self.dashboard = Dashboard(labels, tau_report, image_every_n_steps, kills_tap)
        self.settings = settings
        self.charts: tuple[str, ...] = MEMEL_CHARTS
        self._task_tags: tuple[str, ...] = ()
        self._last_step: Optional[int] = None
        self.logged: set[str] = set()  # MEmeL tags logged so far (the callback logs them itself)

    @staticmethod
    def writers(trainer: Trainer) -> list[Any]:
        """The ``SummaryWriter`` of each TensorBoard logger (none off rank zero)."""
        if not trainer.is_global_zero:
            return []
        return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def setup(self, trainer: Trainer) -> None:
        for logger in trainer.loggers:
            # Lightning writes HParams with a placeholder metric hp_metric = -1 at fit start
            # unless default_hp_metric=False; finish() writes them with the real metrics,
            # so the placeholder is turned off here, for every config (before fit start).
            if isinstance(logger, TensorBoardLogger) and getattr(logger, "_default_hp_metric", False):
                logger._default_hp_metric = False

    def start(self, trainer: Trainer, charts: Iterable[str]) -> None:
        self.charts = tuple(charts)
        for writer in self.writers(trainer):
            self.dashboard.write_layout(writer, self.charts, self._task_tags)

    def after_validation(self, trainer: Trainer) -> None:
        """Once the task's validation metrics are logged, chart them (layout rewritten once)."""
        if trainer.sanity_checking:
            return
        tags = tuple(sorted(trainer.logged_metrics))
        if not any(t.startswith("val") for t in tags) or self._task_tags:
            return
        self._task_tags = tags
        for writer in self.writers(trainer):
            self.dashboard.write_layout(writer, self.charts, self._task_tags)

    def step(self, trainer: Trainer, step: int, metrics: Mapping[str, Any], logged_tags: Iterable[str] = ()) -> None:
        """A recorded step: its ``TapSet.end_step`` result and the tags it was logged under."""
        if not trainer.is_global_zero:
            return  # the views are drawn on rank zero only: no host copies elsewhere
        self.logged.update(logged_tags)
        self.dashboard.record(step, metrics)
        self._last_step = step
        if self.dashboard.images_due(step):
            for writer in self.writers(trainer):
                self.dashboard.write_images(writer, step)
            self.dashboard.last_image_step = step  # the same cadence with or without a writer

    def phi(
        self, trainer: Trainer, step: int, samples: Mapping[str, Any], metrics: Mapping[str, Any], title: str
    ) -> None:
        for writer in self.writers(trainer):
            self.dashboard.write_phi(writer, step, samples, metrics, title)

    def finish(self, trainer: Trainer) -> list[str]:
        """Final heatmap and HParams (the MEmeL settings with the final metrics); the
        metric tags. The module's own hyperparameters stay in Lightning's hparams.yaml:
        dozens of them would push the MEmeL columns out of TensorBoard's first view."""
        tags: list[str] = []
        step = self._last_step if self._last_step is not None else 0
        params = memel_hparams(self.settings, list(self.dashboard.labels.values()))
        for writer in self.writers(trainer):
            if self.dashboard.last_image_step != step:
                self.dashboard.write_images(writer, step)
            tags = self.dashboard.write_hparams(writer, step, params, set(trainer.logged_metrics) | self.logged)
        return tags
