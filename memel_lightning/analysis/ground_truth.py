"""True monosemanticity when the features are known (the toy model), and how well phi finds it.

For a hidden layer ``h = act(W x + b)`` reading ``n`` known features, the response of
neuron ``j`` to feature ``i`` alone is ``A[j, i] = |h_j(s * e_i) - h_j(0)|`` (``s`` the
feature's magnitude). A neuron's **true monosemanticity** is the share of its response
mass on its largest feature::

    share_j = max_i A[j, i] / sum_i A[j, i]          (in [1/n, 1])

``share_j = 1``: the neuron answers one feature only; ``1/n``: all features alike. A
neuron whose responses are all zero is **dead** (share 0, neither mono- nor
polysemantic). A live neuron is *truly monosemantic* when ``share_j >= threshold``
(default 0.9) and *polysemantic* otherwise. :func:`weight_share` is the same measure on
the rows of ``W`` (``A = |W|``), for linear read-ins.

The phi-based selection a MEmeL user sees (docs/method.md §6) marks neuron ``j`` as
monosemantic when its maximum phi over a set exceeds ``tau_report``;
:func:`phi_selection_quality` compares that with the truth (precision, recall) and
gives the Spearman rank correlation between each neuron's max phi and ``share_j``.

MEmeL's kill concentration (``memel/kill_concentration``, once logged as ``memel/fkr``)
counts the kills on neurons selected in more than ``max_share`` of the step's samples, a
label-free proxy for false kills. :func:`true_kill_rates` gives the rate it stands in
for, the share of kills on neurons that are *not* truly monosemantic::

    true_fkr = sum_j kills_j * [not mono_j] / sum_j kills_j

Dead neurons count as not truly monosemantic (they answer no single feature, so a
kill there inhibits no monosemantic neuron); their share of the kills is reported
separately as ``dead_kill_frac``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..inhibition import RunningMoments, monosemantic_scale


def mass_share(response: Tensor, dead_tol: float = 1e-6) -> Tensor:
    """``max_i A[j, i] / sum_i A[j, i]`` per row of a non-negative ``(m, n)`` response.

    Rows whose total mass is ``<= dead_tol`` (dead neurons) get share 0.

    Example:
        >>> mass_share(torch.tensor([[3.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
        tensor([0.7500, 0.0000, 0.5000])
    """
    if response.dim() != 2:
        raise ValueError(f"response must be (neurons, features), got shape {tuple(response.shape)}")
    if (response < 0).any():
        raise ValueError("response must be non-negative (take absolute values first)")
    total = response.sum(dim=1)
    share = response.amax(dim=1) / total.clamp(min=torch.finfo(response.dtype).tiny)
    return torch.where(total > dead_tol, share, torch.zeros_like(share))


def weight_share(weight: Tensor, dead_tol: float = 1e-6) -> Tensor:
    """True monosemanticity from read-in weights ``W`` ``(m, n)``: ``max_i |W_ji| / sum_i |W_ji|``.

    Example:
        >>> weight_share(torch.tensor([[2.0, -2.0], [0.0, 5.0]]))
        tensor([0.5000, 1.0000])
    """
    return mass_share(weight.detach().abs().double(), dead_tol).to(weight.dtype)


@torch.no_grad()
def feature_response(hidden: Callable[[Tensor], Tensor], n_features: int, scale: float = 1.0) -> Tensor:
    """``A[j, i] = |h_j(scale * e_i) - h_j(0)|``: each neuron's response to each feature alone.

    ``hidden`` maps ``(B, n_features)`` inputs to ``(B, m)`` hidden activations.
    Returns ``(m, n_features)`` in float64.
    """
    probes = torch.cat([torch.zeros(1, n_features), scale * torch.eye(n_features)])
    h = hidden(probes).double()
    if h.dim() != 2:
        raise ValueError(f"hidden(x) must return (B, m), got shape {tuple(h.shape)}")
    return (h[1:] - h[:1]).abs().T.contiguous()


@dataclass
class NeuronTruth:
    """True monosemanticity of a layer's neurons (see the module docstring)."""

    share: Tensor          # (m,) share of response mass on the top feature; 0 for dead neurons
    top_feature: Tensor    # (m,) the feature with the largest response
    alive: Tensor          # (m,) bool
    mono: Tensor           # (m,) bool: alive and share >= threshold
    threshold: float

    @property
    def poly(self) -> Tensor:
        return self.alive & ~self.mono

    def counts(self) -> dict[str, int]:
        return {
            "mono_neurons": int(self.mono.sum()),
            "poly_neurons": int(self.poly.sum()),
            "dead_neurons": int((~self.alive).sum()),
        }


def neuron_truth(response: Tensor, threshold: float = 0.9, dead_tol: float = 1e-6) -> NeuronTruth:
    """Classify neurons from their ``(m, n)`` feature response (:func:`feature_response`)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    share = mass_share(response, dead_tol)
    alive = response.sum(dim=1) > dead_tol
    return NeuronTruth(
        share=share,
        top_feature=response.argmax(dim=1),
        alive=alive,
        mono=alive & (share >= threshold),
        threshold=threshold,
    )


@torch.no_grad()
def set_max_phi(h: Tensor, eps: float = 0.01, moments: RunningMoments | None = None) -> Tensor:
    """Each neuron's maximum phi over the samples ``h`` ``(N, m)``.

    phi uses ``moments`` when given (e.g. a checkpoint's running statistics), else the
    set's own mean and unbiased variance (one exact merge, docs/method.md §2).
    """
    if moments is None:
        moments = RunningMoments()
        moments.update(h.float())
    return monosemantic_scale(h.float(), moments, eps).amax(dim=0)


@dataclass
class SelectionQuality:
    """phi-based selection (max phi > tau) against the truly monosemantic neurons (alive only)."""

    precision: float
    recall: float
    spearman: float        # rank correlation of max phi and true share over live neurons
    phi_mono_ratio: float  # fraction of all neurons selected (docs/method.md §6's mono ratio over the set)
    true_mono_ratio: float # fraction of all neurons truly monosemantic
    selected: int
    true_positives: int
    truly_mono: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def phi_selection_quality(max_phi: Tensor, truth: NeuronTruth, tau: float = 9.0) -> SelectionQuality:
    """Precision and recall of ``max_phi > tau`` as a detector of truly monosemantic neurons.

    Dead neurons are left out of precision, recall and the correlation (their phi is
    undefined: they never vary). Precision is NaN when nothing is selected, recall NaN
    when no neuron is truly monosemantic, Spearman NaN with fewer than 3 live neurons or
    a constant input.
    """
    from scipy.stats import spearmanr

    alive = truth.alive
    selected = (max_phi > tau) & alive
    tp = int((selected & truth.mono).sum())
    n_sel, n_true = int(selected.sum()), int(truth.mono.sum())
    a = max_phi[alive].double().cpu().numpy()
    b = truth.share[alive].double().cpu().numpy()
    rho = math.nan
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        rho = float(spearmanr(a, b).statistic)
    m = max_phi.numel()
    return SelectionQuality(
        precision=tp / n_sel if n_sel else math.nan,
        recall=tp / n_true if n_true else math.nan,
        spearman=rho,
        phi_mono_ratio=float((max_phi > tau).sum()) / m,
        true_mono_ratio=n_true / m,
        selected=n_sel,
        true_positives=tp,
        truly_mono=n_true,
    )


def true_kill_rates(kills: Tensor, truth: NeuronTruth) -> dict[str, float]:
    """How many of a step's kills fell on neurons that are not truly monosemantic.

    ``kills`` ``(m,)``: kills per neuron (e.g. ``kills_per_neuron`` of ``MEmeL.end_step()``).
    Returns ``true_fkr`` (kills on polysemantic or dead neurons / kills),
    ``poly_kill_frac`` and ``dead_kill_frac`` (the two parts of ``true_fkr``) and
    ``kills`` (the total); the rates are NaN when there are no kills.

    Example:
        >>> truth = neuron_truth(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
        >>> true_kill_rates(torch.tensor([2.0, 1.0, 1.0]), truth)["true_fkr"]
        0.5
    """
    k = kills.detach().double().flatten().cpu()
    if k.numel() != truth.mono.numel():
        raise ValueError(f"kills has {k.numel()} neurons, the truth {truth.mono.numel()}")
    total = float(k.sum())
    poly = float(k[truth.poly.cpu()].sum())
    dead = float(k[~truth.alive.cpu()].sum())
    rate = (lambda x: x / total) if total > 0 else (lambda x: math.nan)
    return {"true_fkr": rate(poly + dead), "poly_kill_frac": rate(poly), "dead_kill_frac": rate(dead), "kills": total}
