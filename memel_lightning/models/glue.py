"""GLUE fine-tuning of a Hugging Face encoder (BERT and kin) with MEmeL taps on its middle blocks."""
from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryF1Score,
    BinaryMatthewsCorrCoef,
    MulticlassAccuracy,
)
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

from ..data.glue import GlueTask, glue_task
from .hf_loading import from_pretrained_quietly
from .optim import adamw, lazy_lambda_lr, warmup_steps
from .taps import hf_encoder_taps

def glue_metrics(task: str) -> MetricCollection:
    """The GLUE metrics of ``task`` as a torchmetrics collection (keys are the logged names
    without ``val_``): CoLA ``mcc``; STS-B ``pearson``, ``spearman``; MRPC/QQP ``acc``,
    ``f1``; the others ``acc``. Inputs: class ids (long) or STS-B scores (float), and targets.

    Example:
        >>> m = glue_metrics("mrpc")
        >>> m.update(torch.tensor([1, 0, 1, 1]), torch.tensor([1, 0, 0, 1]))
        >>> {k: round(float(v), 4) for k, v in m.compute().items()}
        {'acc': 0.75, 'f1': 0.8}
    """
    spec = glue_task(task)
    if spec.name == "cola":
        metrics: dict[str, Any] = {"mcc": BinaryMatthewsCorrCoef()}
    elif spec.name == "stsb":
        metrics = {"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef()}
    elif spec.name in ("mrpc", "qqp"):
        metrics = {"acc": BinaryAccuracy(), "f1": BinaryF1Score()}
    else:
        metrics = {"acc": MulticlassAccuracy(num_classes=spec.num_labels, average="micro")}
    return MetricCollection(metrics)


def glue_score(task: str, values: dict[str, Tensor]) -> Tensor:
    """GLUE's one number per task: the mean of the task's metrics (MCC for CoLA, the mean of
    Pearson and Spearman for STS-B, of accuracy and F1 for MRPC/QQP, accuracy otherwise)."""
    return torch.stack([v.float() for v in values.values()]).mean()


class GlueClassifier(pl.LightningModule):
    """Fine-tune ``AutoModelForSequenceClassification`` on one GLUE task.

    ``pretrained`` is a hub name or a local folder; alternatively ``config`` (a dict for
    ``AutoConfig.for_model``, ``model_type`` defaulting to ``"bert"``) builds an untrained
    model. The head has the task's number of labels (one regression output for STS-B,
    trained with MSE; cross-entropy otherwise).

    ``task`` may be left None: a :class:`~memel_lightning.data.GlueDataModule` attached to
    the same trainer then sets it in its ``setup`` (before callbacks are set up), and it is
    saved in the checkpoint's hyper-parameters. This is what lets ``--data.task`` alone
    switch the task on the command line. A model fine-tuned on MNLI also predicts AX.

    Optimiser (the paper's recipe, :mod:`~memel_lightning.models.optim`): AdamW (no weight
    decay on biases and LayerNorm), linear warm-up over ``warmup_ratio`` of the total steps
    (at least one step when it is > 0), then linear decay to zero.

    Logs ``train_loss``, ``val_loss`` and per validation epoch the task metrics
    (``val_mcc``; ``val_pearson``, ``val_spearman``; ``val_acc``, ``val_f1``; ``val_acc``),
    plus ``val_score`` (GLUE's one number per task). MNLI logs matched and mismatched
    separately with suffixes ``_m`` and ``_mm`` (``val_acc_m``, ``val_acc_mm``,
    ``val_loss_m``...; ``val_score`` is the matched one).

    Taps: :meth:`memel_taps` gives the outputs of the middle four blocks of the encoder
    (:func:`~memel_lightning.models.taps.middle_blocks`: 4-7 of 12, 1-4 of 6); :meth:`memel_mask` gives the batch's
    attention mask, so padding is never inhibited nor counted (``mask_padding=False``, the
    authors' set-up in paper mode, drops the mask: with fixed padding to 128 the top-1 of a
    short sentence may then land on a padding position).

    Example:
        >>> model = GlueClassifier(task="rte", config={"hidden_size": 32, "num_hidden_layers": 6,
        ...     "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100})
        >>> model.memel_taps()
        ['model.bert.encoder.layer.1', 'model.bert.encoder.layer.2', 'model.bert.encoder.layer.3', \
'model.bert.encoder.layer.4']
        >>> model(torch.ones(2, 5, dtype=torch.long)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        task: Optional[str] = None,
        pretrained: Optional[str] = None,
        config: Optional[dict[str, Any]] = None,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        adam_eps: float = 1e-6,
        num_taps: int = 4,
        mask_padding: bool = True,
    ) -> None:
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("GlueClassifier needs exactly one of pretrained=<hub name or folder> or config={...}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.save_hyperparameters()
        if task is not None:  # canonical name ("RTE" -> "rte"), as the data module records it
            self.hparams.task = self._hparams_initial["task"] = glue_task(task).name
        self.model: Optional[nn.Module] = None
        self.spec: Optional[GlueTask] = None
        self.val_metrics = nn.ModuleList()
        self.val_suffixes: list[str] = []
        if task is not None:
            self._build(self.hparams.task)

    # ------------------------------------------------------------------ building
    @property
    def tokenizer_name(self) -> Optional[str]:
        """The ``pretrained`` name or folder, whose tokenizer the data module uses by default."""
        return self.hparams.pretrained

    def bind_glue_task(self, task: str) -> None:
        """Called by ``GlueDataModule.setup``: adopt the data's task, or check it matches."""
        spec = glue_task(task)
        if self.spec is None:
            # Record it as if passed to __init__: saved in checkpoints, logged with the data's.
            self.hparams.task = spec.name
            if getattr(self, "_hparams_initial", None) is not None:
                self._hparams_initial["task"] = spec.name
            self._build(spec.name)
            return
        compatible = spec.name == self.spec.name or (spec.name == "ax" and self.spec.name == "mnli")
        if not compatible:
            raise ValueError(
                f"GlueClassifier was built for task {self.spec.name!r} but the data module has task "
                f"{spec.name!r}: leave model.task unset (null) to take the data's task"
            )

    def _build(self, task: str) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        spec = glue_task(task)
        self.spec = spec
        heads: dict[str, Any] = {"num_labels": spec.num_labels}
        if spec.is_regression:
            heads["problem_type"] = "regression"
        else:
            heads["problem_type"] = "single_label_classification"
            heads["id2label"] = dict(enumerate(spec.labels))
            heads["label2id"] = {name: i for i, name in enumerate(spec.labels)}
        if self.hparams.pretrained is not None:
            self.model = from_pretrained_quietly(
                AutoModelForSequenceClassification.from_pretrained, self.hparams.pretrained,
                f"GlueClassifier ({spec.name})", ignore_mismatched_sizes=True, **heads,
            )
        else:
            cfg = dict(self.hparams.config)
            cfg = AutoConfig.for_model(cfg.pop("model_type", "bert"), **cfg, **heads)
            self.model = AutoModelForSequenceClassification.from_config(cfg)
        # transformers 5 returns from_pretrained models in eval mode, and Lightning keeps each
        # submodule's mode: without this, dropout and the MEmeL taps would be off in training.
        self.model.train(self.training)
        suffixes = [s[2] for s in spec.val_splits] or [""]
        self.val_suffixes = suffixes
        self.val_metrics = nn.ModuleList(glue_metrics(spec.name) for _ in suffixes)

    def _net(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError(
                "GlueClassifier has no task yet: pass task=... or attach a GlueDataModule (its setup sets it)"
            )
        return self.model

    def memel_taps(self) -> list[str]:
        return hf_encoder_taps(self._net(), prefix="model.", count=self.hparams.num_taps)

    def memel_mask(self, batch: dict[str, Tensor]) -> Optional[Tensor]:
        """The attention mask ``(B, L)``: padding positions are excluded from inhibition.
        ``mask_padding=False`` (the authors' code, paper mode) lets padding positions into the
        statistics and the selection."""
        return batch.get("attention_mask") if self.hparams.mask_padding else None

    def memel_labels(self, batch: dict[str, Tensor]) -> Optional[Tensor]:
        """Feature labels for the labelled False Killing Rate: each sequence's class; for
        STS-B (a similarity score in [0, 5]) the score's unit bin, 0-4 (5.0 joins bin 4)."""
        labels = batch.get("labels")
        if labels is None:
            return None
        if self.spec.is_regression:
            return labels.float().floor().clamp(0, 4).long()
        return labels

    # ------------------------------------------------------------------ steps
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        logits = self._net()(input_ids=input_ids, **kwargs).logits
        return logits.squeeze(-1) if self.spec.is_regression else logits

    def probe_forward(self, batch: dict[str, Tensor]) -> Tensor:
        """The forward of a data-module batch (``cli.py probe``): the batch's ``idx`` and
        ``labels`` are not inputs of the network."""
        return self._logits(batch)

    def _logits(self, batch: dict[str, Tensor]) -> Tensor:
        return self(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.spec.is_regression:
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def _predictions(self, logits: Tensor) -> Tensor:
        return logits.float() if self.spec.is_regression else logits.argmax(-1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(self._logits(batch), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val")

    def _eval_step(self, batch: dict[str, Tensor], dataloader_idx: int, stage: str) -> None:
        logits = self._logits(batch)
        suffix = self.val_suffixes[dataloader_idx]
        self.log(
            f"{stage}_loss{suffix}",
            self._loss(logits, batch["labels"]),
            prog_bar=True,
            batch_size=batch["input_ids"].shape[0],
            add_dataloader_idx=False,
        )
        self.val_metrics[dataloader_idx].update(self._predictions(logits), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def _log_metrics(self, stage: str) -> None:
        score = None
        for suffix, metrics in zip(self.val_suffixes, self.val_metrics):
            if not metrics[next(iter(metrics.keys()))].update_called:
                continue
            values = metrics.compute()
            metrics.reset()
            for key, value in values.items():
                self.log(f"{stage}_{key}{suffix}", value, prog_bar=True)
            if score is None:
                score = glue_score(self.spec.name, values)
        if score is not None:
            self.log(f"{stage}_score", score, prog_bar=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{"index": GLUE indices, "prediction": class ids (long) or STS-B scores (float)}``."""
        return {"index": batch["idx"], "prediction": self._predictions(self._logits(batch))}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = adamw(self._net(), lr=hp.lr, weight_decay=hp.weight_decay, eps=hp.adam_eps)

        def lengths() -> tuple[int, int]:  # asked at the first step, after a resume's loop state is back
            total = max(1, int(self.trainer.estimated_stepping_batches))
            return warmup_steps(hp.warmup_ratio, total), total

        scheduler = lazy_lambda_lr(optimizer, lengths, "linear", warms_up=hp.warmup_ratio > 0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
