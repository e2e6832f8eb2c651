"""GLUE server submission files, written by ``predict``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from .glue import GlueTask, glue_task


def format_prediction(spec: GlueTask, value: Union[int, float]) -> str:
    """One prediction as the GLUE server reads it: the label name (``entailment``,
    ``not_entailment``, ``neutral``, ``contradiction``, or ``0``/``1``), or for STS-B the
    score clipped to [0, 5] with three decimals."""
    if spec.is_regression:
        return f"{min(5.0, max(0.0, float(value))):.3f}"
    return spec.labels[int(value)]


def write_submission(path: Union[str, Path], spec: GlueTask, index: Sequence[int], predictions: Sequence[Any]) -> Path:
    """Write ``index\\tprediction`` rows (header line, sorted by index) to ``path``.

    Example:
        >>> p = write_submission("/tmp/RTE.tsv", glue_task("rte"), [1, 0], [0, 1])  # doctest: +SKIP
        >>> open(p).read()  # doctest: +SKIP
        'index\\tprediction\\n0\\tnot_entailment\\n1\\tentailment\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(zip((int(i) for i in index), predictions), key=lambda r: r[0])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # atomic: the name holds a whole file or none
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            fh.write("index\tprediction\n")
            for i, value in rows:
                fh.write(f"{i}\t{format_prediction(spec, value)}\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class GlueSubmissionWriter(BasePredictionWriter):
    """Writes the GLUE server file(s) of the predicted task when ``predict`` ends.

    One file per predict loader, named as the server expects (``CoLA.tsv``, ``SST-2.tsv``,
    ``MRPC.tsv``, ``STS-B.tsv``, ``QQP.tsv``, ``MNLI-m.tsv`` and ``MNLI-mm.tsv``,
    ``QNLI.tsv``, ``RTE.tsv``, ``WNLI.tsv``, ``AX.tsv``; dev-set predictions,
    ``--data.predict_split dev``, as ``RTE.dev.tsv``...) in ``output_dir`` (default:
    ``<logger save_dir>/submissions/<logger name>``, e.g. ``runs/submissions/bert_glue_memel``);
    files are written atomically; rows are
    ``index\\tprediction`` after a header line, sorted by index, with label names as GLUE
    expects. The task and the file names come from the trainer's
    :class:`~memel_lightning.data.GlueDataModule`. Predictions are collected per batch
    (``predict_step`` returns ``{"index", "prediction"}``), so ``return_predictions``
    does not matter; under DDP the ranks' rows are gathered and de-duplicated by index and
    rank zero writes.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: memel_lightning.data.GlueSubmissionWriter
              init_args: {output_dir: submissions}
    """

    def __init__(self, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self._rows: dict[int, list[tuple[int, Any]]] = {}
        self.written: list[Path] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = {}
        self.written = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        index = prediction["index"].detach().cpu().tolist()
        values = prediction["prediction"].detach().float().cpu().tolist()
        self._rows.setdefault(dataloader_idx, []).extend(zip(index, values))

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        datamodule = trainer.datamodule
        task = getattr(datamodule, "task", None) or getattr(pl_module.hparams, "task", None)
        if task is None:
            raise ValueError("GlueSubmissionWriter: no GLUE task (use a GlueDataModule or a GlueClassifier with task)")
        spec = glue_task(task)
        names = getattr(datamodule, "submission_names", None) or [s[3] for s in spec.test_splits]
        rows = self._rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = {}
            for part in gathered:
                for k, v in part.items():
                    rows.setdefault(k, []).extend(v)
        if not trainer.is_global_zero:
            return
        out = self.output_dir if self.output_dir is not None else default_output_dir(trainer)
        for loader, name in enumerate(names):
            unique = dict(rows.get(loader, []))  # DDP pads with repeated samples: one row per index
            self.written.append(write_submission(out / name, spec, list(unique), list(unique.values())))
        rank_zero_info("GLUE predictions written to " + ", ".join(str(p) for p in self.written))


def default_output_dir(trainer: Trainer) -> Path:
    """``<save_dir>/submissions/<name>`` of the trainer's logger (``submissions`` without one)."""
    logger = trainer.logger
    save_dir, name = getattr(logger, "save_dir", None), getattr(logger, "name", None)
    if save_dir is None or not name:
        return Path("submissions")
    return Path(save_dir) / "submissions" / str(name)
