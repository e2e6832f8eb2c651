"""A ground-truth toy: reconstruct sparse known features through m >= n ReLU neurons."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.ground_truth import (
    NeuronTruth, feature_response, neuron_truth, phi_selection_quality, set_max_phi, true_kill_rates,
)
from ..callback import log_step


class PolysemanticToy(pl.LightningModule):
    r"""A one-hidden-layer autoencoder of ``n_features`` sparse independent features.

    ``h = ReLU(W x + b)`` (``encoder``, the MEmeL tap, ``hidden >= n_features`` neurons)
    and ``x_hat = W2 h + b2`` (``decoder``, unit-norm columns as in sparse autoencoders). The loss is the reconstruction MSE plus
    ``l1 * mean|h|``; ``noise_std`` adds Gaussian noise to the inputs in training. These
    are the three sources of *incidental* polysemanticity (random initialisation, L1
    regularisation, noise): even with ``hidden >= n_features`` a neuron can end up
    answering several features.

    Because the features are known, every validation epoch measures each neuron's true
    monosemanticity (share of its response mass on its largest feature, see
    :mod:`memel_lightning.analysis.ground_truth`) and compares it with phi-based
    selection (max phi over the validation set ``> tau_report``, phi from the set's own
    mean and variance). Logs ``train_loss``, ``val_loss`` (= ``val_recon_loss``, MSE
    without the L1 term), ``val_mono_neurons``, ``val_poly_neurons``,
    ``val_dead_neurons``, ``val_true_mono_ratio``, ``val_phi_mono_ratio``,
    ``val_phi_precision``, ``val_phi_recall``, ``val_phi_spearman``, ``val_phi_selected``
    and ``val_phi_true_positives`` (the counts behind precision and recall).

    Trained with a :class:`~memel_lightning.MEmeLCallback` on ``encoder``, every step the
    callback records (its ``log_every_n_steps``) it hands the step's metrics to
    :meth:`memel_step_end`, and the model logs, at the same step as
    ``memel/kill_concentration``, the *true* false-kill rate: ``train_true_fkr``, the
    share of the step's kills on neurons that are not truly monosemantic (polysemantic
    or dead, truth measured on the weights that produced the kills), and its dead part
    ``train_dead_kill_frac`` (:func:`~memel_lightning.analysis.ground_truth.true_kill_rates`).

    Example:
        >>> model = PolysemanticToy(n_features=4, hidden=6)
        >>> model(torch.eye(4)).shape
        torch.Size([4, 4])
        >>> model.memel_taps()
        ['encoder']
    """

    def __init__(
        self,
        n_features: int = 20,
        hidden: int = 40,
        l1: float = 0.03,
        noise_std: float = 0.0,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        mono_threshold: float = 0.9,
        tau_report: float = 9.0,
        eps: float = 0.01,
    ) -> None:
        super().__init__()
        if hidden < n_features:
            raise ValueError(f"hidden ({hidden}) must be >= n_features ({n_features}): the m >= n setting")
        self.save_hyperparameters()
        self.encoder = nn.Sequential(OrderedDict(fc=nn.Linear(n_features, hidden), act=nn.ReLU()))
        self.decoder = nn.Linear(hidden, n_features)
        self._val_hidden: list[Tensor] = []
        self._step_truth: Optional[NeuronTruth] = None  # the truth of the weights of this step's forward
        self.last_kill_truth: dict[str, float] = {}  # the last recorded step's true kill rates

    def memel_taps(self) -> list[str]:
        return ["encoder"]

    def decode(self, h: Tensor) -> Tensor:
        """``x_hat = W2 h + b2`` with every column of ``W2`` scaled to unit norm (so that the
        L1 penalty cannot be dodged by shrinking ``h`` and growing ``W2``)."""
        w = self.decoder.weight
        return F.linear(h, w / w.norm(dim=0, keepdim=True).clamp(min=1e-8), self.decoder.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encoder(x))

    def per_sample_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Reconstruction MSE of every sample (used by the ablation probe)."""
        x = batch[0]
        return (self(x) - x).square().mean(dim=1)

    @torch.no_grad()
    def truth(self) -> NeuronTruth:
        """Each hidden neuron's true monosemanticity now (21 probe inputs: cheap)."""
        fc = self.encoder.fc  # the layer itself, not through the tap's hook
        response = feature_response(lambda x: torch.relu(fc(x.to(fc.weight.device))).cpu(), self.hparams.n_features)
        return neuron_truth(response, self.hparams.mono_threshold)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        x_in = x + self.hparams.noise_std * torch.randn_like(x) if self.hparams.noise_std > 0 else x
        h = self.encoder(x_in)
        # before the optimizer step: the truth of the weights that produce this step's kills
        self._step_truth = self.truth()
        recon = F.mse_loss(self.decode(h), x)
        loss = recon + self.hparams.l1 * h.abs().mean()
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_recon_loss", recon)
        return loss

    def memel_labels(self, batch: tuple[Tensor, Tensor]) -> Optional[Tensor]:
        """Feature labels for the labelled FKR: each sample's dominant feature
        (``n_features`` when no feature is active)."""
        return batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None

    def memel_step_end(self, metrics: dict[str, Tensor]) -> None:
        """Called by MEmeLCallback after a recorded step: log the true kill rates of the
        step's kills (``encoder/kills_per_neuron``) next to the callback's metrics."""
        kills = metrics.get("encoder/kills_per_neuron")
        if kills is None or self._step_truth is None:
            return
        self.last_kill_truth = rates = true_kill_rates(kills, self._step_truth)
        if math.isnan(rates["true_fkr"]) or not self.trainer.is_global_zero:
            return  # no kills this step (before the late start)
        values = {"train_true_fkr": rates["true_fkr"], "train_dead_kill_frac": rates["dead_kill_frac"]}
        for logger in self.trainer.loggers:  # at the callback's step (also with its own cadence)
            logger.log_metrics(values, step=log_step(self.trainer))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = batch[0]
        h = self.encoder(x)
        recon = F.mse_loss(self.decode(h), x)
        self.log("val_loss", recon, prog_bar=True)
        self.log("val_recon_loss", recon)
        self._val_hidden.append(h.detach().float().cpu())

    def on_validation_epoch_start(self) -> None:
        self._val_hidden = []

    @torch.no_grad()
    def neuron_report(self, h: Tensor) -> dict[str, float]:
        """Ground truth and phi-based selection for hidden activations ``h`` ``(N, hidden)``."""
        truth = self.truth()
        quality = phi_selection_quality(set_max_phi(h, self.hparams.eps), truth, self.hparams.tau_report)
        out = {k: float(v) for k, v in truth.counts().items()}
        out.update(quality.as_dict())
        return out

    def on_validation_epoch_end(self) -> None:
        if not self._val_hidden:
            return
        report = self.neuron_report(torch.cat(self._val_hidden))
        self._val_hidden = []
        for key in ("mono_neurons", "poly_neurons", "dead_neurons", "true_mono_ratio", "phi_mono_ratio",
                    "precision", "recall", "spearman", "selected", "true_positives"):
            value = report[key]
            phi_keys = ("precision", "recall", "spearman", "selected", "true_positives")
            name = f"val_phi_{key}" if key in phi_keys else f"val_{key}"
            if not math.isnan(value):
                self.log(name, value)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = batch[0]
        self.log("test_loss", F.mse_loss(self(x), x))

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
