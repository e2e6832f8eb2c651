"""Precipitation nowcasting on HKO-7 with an encoder-forecaster ConvGRU chosen by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ..metrics.nowcasting import (
    BALANCING_WEIGHTS,
    CSI,
    HSS,
    THRESHOLDS,
    ZR_A,
    ZR_B,
    BalancedMAE,
    BalancedMSE,
    balancing_weights,
    threshold_name,
)
from ..monitoring import nowcast_frames_image
from .convgru import build_arch

Batch = dict[str, Tensor]


class Nowcaster(pl.LightningModule):
    r"""Radar-echo nowcasting: ``in_frames`` observed frames -> ``out_frames`` predicted ones.

    The network is built by name from the registry of
    :mod:`memel_lightning.models.convgru` (timm style): ``arch`` is ``"hko7_benchmark"``
    (the HKO-7 benchmark's encoder-forecaster, default) or ``"memel_paper"`` (the MEmeL
    authors'), and ``arch_kwargs`` override the builder's defaults (any
    :class:`~memel_lightning.models.convgru.EncoderForecaster` argument, e.g. narrower
    ``conv_channels``/``hidden_channels`` for a CPU demo). The network is ``self.net``.
    ``init_from``: a Lightning checkpoint whose ``net.*`` weights start this model (the
    authors' fine-tuning starts from the trained baseline; optimiser, step count and MEmeL
    statistics start fresh). The checkpoint must still exist when this model is rebuilt.

    Batches are dicts from :class:`~memel_lightning.data.HKO7DataModule`: ``inputs``
    ``(T_in, B, 1, H, W)``, ``targets`` and ``mask`` ``(T_out, B, 1, H, W)`` (pixel values in
    [0, 1]; mask true where the pixel counts). Time-first like the benchmark; with
    ``batch_first=True`` every tensor is ``(B, T, 1, H, W)`` instead (the data module's
    flag must match).

    Loss: the benchmark's balanced MSE + MAE (docs/method.md §9) with the HKO-7 mask::

        w = balancing_weights(target) * mask
        loss = loss_scale * mean_frames( mse_weight * sum_pixels w (y - t)^2
                                        + mae_weight * sum_pixels w |y - t| )

    ``loss_scale`` defaults to ``1 / (H * W)`` (a per-pixel mean, so the learning rate
    does not depend on the frame size); the authors use ``5e-5``. Optimiser: Adam
    (``lr``, ``weight_decay``), the learning rate multiplied by ``lr_gamma`` every
    ``lr_step_size`` training steps when ``lr_step_size`` is set (the authors: 0.7 every
    5k). Validation/test log ``<split>_loss``, ``<split>_bmse``, ``<split>_bmae`` (means
    over the output frames of the per-frame errors, :mod:`~memel_lightning.metrics.nowcasting`),
    and per threshold ``<split>_csi_<t>`` / ``<split>_hss_<t>`` (``t`` as ``0p5``, ``2``,
    ``5``, ``10``, ``30``), on predictions clipped to [0, 1]; test also logs the per-frame
    errors ``test_bmse_f01`` ... ``test_bmae_f<T_out>``. Every validation epoch the first
    validation sequence goes to TensorBoard as image ``val_frames`` (only with a
    ``TensorBoardLogger``): three labelled rows, the input frames, the observation and the
    prediction (:func:`~memel_lightning.monitoring.nowcast_frames_image`).

    MEmeL: :meth:`memel_taps` returns the six ConvGRU candidate states
    ``net.encoder.<i>.cell.candidate`` and ``net.forecaster.<i>.cell.candidate``; each is
    called once per time step, so one MEmeL per cell shares its statistics across time
    steps: its ``late_start`` counts training batches, its ``forget_steps`` statistics
    updates, i.e. time steps (``T_in`` per batch for encoder cells, ``T_out`` for
    forecaster cells).

    Example:
        >>> model = Nowcaster(in_frames=3, out_frames=2,
        ...                   arch_kwargs=dict(conv_channels=(4, 8, 8), hidden_channels=(8, 8, 8)))
        >>> model(torch.rand(3, 2, 1, 48, 48)).shape
        torch.Size([2, 2, 1, 48, 48])
        >>> len(model.memel_taps())
        6
    """

    def __init__(
        self,
        arch: str = "hko7_benchmark",
        arch_kwargs: Optional[dict[str, Any]] = None,
        in_frames: int = 10,
        out_frames: int = 10,
        batch_first: bool = False,
        init_from: Optional[str] = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_step_size: Optional[int] = None,
        lr_gamma: float = 1.0,
        mse_weight: float = 1.0,
        mae_weight: float = 1.0,
        loss_scale: Optional[float] = None,
        thresholds: Sequence[float] = THRESHOLDS,
        weights: Sequence[float] = BALANCING_WEIGHTS,
        zr_a: float = ZR_A,
        zr_b: float = ZR_B,
        log_images: bool = True,
    ) -> None:
        super().__init__()
        if lr_step_size is not None and lr_step_size < 1:
            raise ValueError(f"lr_step_size must be >= 1 or null, got {lr_step_size}")
        self.save_hyperparameters()
        self.net = build_arch(arch, in_channels=1, **dict(arch_kwargs or {}))
        if init_from:
            self._load_net(init_from)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.weights = tuple(float(w) for w in weights)
        time_axis = 1 if batch_first else 0
        zr = dict(a=zr_a, b=zr_b)
        per_frame = dict(seq_len=out_frames, time_axis=time_axis, **zr)
        self.val_bmse = BalancedMSE(self.thresholds, self.weights, **per_frame)
        self.val_bmae = BalancedMAE(self.thresholds, self.weights, **per_frame)
        self.val_csi = CSI(self.thresholds, time_axis=time_axis, **zr)
        self.val_hss = HSS(self.thresholds, time_axis=time_axis, **zr)
        self.test_bmse = BalancedMSE(self.thresholds, self.weights, **per_frame)
        self.test_bmae = BalancedMAE(self.thresholds, self.weights, **per_frame)
        self.test_csi = CSI(self.thresholds, time_axis=time_axis, **zr)
        self.test_hss = HSS(self.thresholds, time_axis=time_axis, **zr)
        self._image_sample: Optional[tuple[Tensor, Tensor, Tensor]] = None

    def _load_net(self, path: str) -> None:
        """Copy the ``net.*`` weights of the Lightning checkpoint ``path`` into ``self.net``."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"Nowcaster init_from: checkpoint {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
        net = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        if not net:
            raise ValueError(f"Nowcaster init_from: checkpoint {path} has no 'net.*' weights")
        try:
            self.net.load_state_dict(net, strict=True)
        except RuntimeError as exc:  # missing, unexpected or mis-shaped weights
            first = str(exc).split("\n\t")[1:2] or [str(exc)]
            raise ValueError(
                f"Nowcaster init_from: checkpoint {path} does not fit arch {self.hparams.arch!r} "
                f"with arch_kwargs={self.hparams.arch_kwargs} ({first[0].strip()})"
            ) from None

    # ------------------------------------------------------------------ MEmeL
    def memel_taps(self) -> list[str]:
        return [f"net.{name}" for name in self.net.candidate_names()]

    # ------------------------------------------------------------------ model
    def forward(self, inputs: Tensor) -> Tensor:
        """``inputs`` ``(T_in, B, 1, H, W)`` (or ``(B, T_in, ...)`` if ``batch_first``) ->
        predictions ``(T_out, B, 1, H, W)`` in the same layout (raw, not clipped)."""
        if inputs.dim() != 5:
            raise ValueError(f"Nowcaster expects 5-D frames, got shape {tuple(inputs.shape)}")
        t_axis = 1 if self.hparams.batch_first else 0
        if inputs.shape[t_axis] != self.hparams.in_frames:
            layout = "(B, T, C, H, W)" if self.hparams.batch_first else "(T, B, C, H, W)"
            raise ValueError(
                f"Nowcaster(in_frames={self.hparams.in_frames}, batch_first={self.hparams.batch_first}) expects "
                f"{layout}, got shape {tuple(inputs.shape)}"
            )
        x = inputs.transpose(0, 1) if self.hparams.batch_first else inputs
        y = self.net(x, out_frames=self.hparams.out_frames)
        return y.transpose(0, 1) if self.hparams.batch_first else y

    def balanced_loss(self, preds: Tensor, targets: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Balanced MSE + MAE (class docstring); differentiable in ``preds``."""
        w = balancing_weights(targets.detach().float(), self.thresholds, self.weights, self.hparams.zr_a, self.hparams.zr_b)
        if mask is not None:
            w = w * mask.to(w.dtype)
        diff = preds.float() - targets.float()
        frames = preds.shape[0] * preds.shape[1]
        mse = (w * diff.square()).sum() / frames
        mae = (w * diff.abs()).sum() / frames
        scale = self.hparams.loss_scale
        if scale is None:
            scale = 1.0 / (preds.shape[-1] * preds.shape[-2])
        return scale * (self.hparams.mse_weight * mse + self.hparams.mae_weight * mae)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        preds = self(batch["inputs"])
        loss = self.balanced_loss(preds, batch["targets"], batch.get("mask"))
        self.log("train_loss", loss, prog_bar=True, batch_size=self._batch_size(batch))
        return loss

    def _batch_size(self, batch: Batch) -> int:
        return batch["inputs"].shape[0 if self.hparams.batch_first else 1]

    def _eval_step(self, batch: Batch, prefix: str) -> Tensor:
        preds = self(batch["inputs"])
        targets, mask = batch["targets"], batch.get("mask")
        loss = self.balanced_loss(preds, targets, mask)
        bs = self._batch_size(batch)
        self.log(f"{prefix}_loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        clipped = preds.detach().clamp(0.0, 1.0)
        for name in ("bmse", "bmae", "csi", "hss"):
            getattr(self, f"{prefix}_{name}").update(clipped, targets, mask)
        return clipped

    def _log_epoch_metrics(self, prefix: str) -> None:
        out = {}
        for name in ("bmse", "bmae"):
            metric = getattr(self, f"{prefix}_{name}")
            per_frame = metric.compute().float()
            out[f"{prefix}_{name}"] = per_frame.mean()
            if prefix == "test":
                for t, v in enumerate(per_frame.tolist(), 1):
                    out[f"{prefix}_{name}_f{t:02d}"] = v
            metric.reset()
        for name in ("csi", "hss"):
            metric = getattr(self, f"{prefix}_{name}")
            scores = metric.compute().float().reshape(-1)
            for t, s in zip(self.thresholds, scores):
                out[f"{prefix}_{name}_{threshold_name(t)}"] = s
            metric.reset()
        self.log_dict(out, prog_bar=False)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        clipped = self._eval_step(batch, "val")
        if batch_idx == 0 and self.hparams.log_images:
            first = (lambda x: x[0]) if self.hparams.batch_first else (lambda x: x[:, 0])
            self._image_sample = tuple(first(x).detach().float().cpu() for x in (batch["inputs"], batch["targets"], clipped))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        sample, self._image_sample = self._image_sample, None
        if sample is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                image = nowcast_frames_image(*sample)  # inputs, observation, prediction: labelled rows
                logger.experiment.add_image("val_frames", image, self.global_step, dataformats="HWC")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self(batch["inputs"]).clamp(0.0, 1.0)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_step_size is None:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams.lr_step_size, gamma=self.hparams.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

