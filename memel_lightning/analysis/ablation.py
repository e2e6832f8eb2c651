"""The ablation probe of the MEmeL paper's figure 2: deactivate one neuron, see which classes suffer.

Neuron ``i`` of a tap is deactivated by replacing its value with its running mean
``mu_i`` (from the checkpoint's MEmeL statistics) for every sample, through a forward
hook. The loss of every class (label) is measured with and without it::

    increase_c = mean_{samples of class c} loss_ablated - mean_{samples of class c} loss

A monosemantic neuron hurts one class only; a polysemantic one, several. The hook is
removed afterwards (also on error) and the model's train/eval mode restored.
"""
from __future__ import annotations

import contextlib
import glob
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inhibition import TapLayout, attach
from .probes import _move, default_forward, default_labels


@contextlib.contextmanager
def ablate_neuron(
    model: nn.Module,
    tap: str,
    neuron: int,
    value: float,
    reduce_dims: Sequence[int] = (),
) -> Iterator[None]:
    """Within the block, neuron ``neuron`` (flat index over the tap's neuron axes, after
    ``reduce_dims``) of module ``tap`` outputs ``value`` for every sample.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        >>> with ablate_neuron(net, "1", neuron=2, value=0.5):
        ...     out = net(torch.randn(2, 3))
        >>> out[:, 2].tolist()
        [0.5, 0.5]
    """
    if tap not in dict(model.named_modules()):
        raise KeyError(f"tap {tap!r} is not a module of {type(model).__name__}")
    with attach(model, [glob.escape(tap)], lambda name: _SetNeuron(TapLayout(tuple(reduce_dims), tap), neuron, value)):
        yield


class _SetNeuron(nn.Module):
    """Sets one neuron (flat index over the kept axes of a :class:`TapLayout`) to ``value``."""

    def __init__(self, layout: TapLayout, neuron: int, value: float) -> None:
        super().__init__()
        self.layout, self.neuron, self.value = layout, neuron, value

    def forward(self, z: Tensor) -> Tensor:
        z2 = self.layout.to_samples(z)
        if not 0 <= self.neuron < z2.shape[1]:
            raise IndexError(
                f"tap {self.layout.name!r} has {z2.shape[1]} neurons per sample, neuron {self.neuron} is out of range"
            )
        z2 = z2.clone()
        z2[:, self.neuron] = self.value
        return self.layout.restore(z2, z)



def default_per_sample_loss(model: nn.Module, batch: Any, forward_fn: Callable = default_forward,
                            label_fn: Callable = default_labels) -> Tensor:
    """``model.per_sample_loss(batch)`` if defined, else cross entropy of the logits per sample."""
    custom = getattr(model, "per_sample_loss", None)
    if callable(custom):
        return custom(batch)
    out = forward_fn(model, batch)
    logits = out.logits if hasattr(out, "logits") else out
    labels = label_fn(batch)
    if labels is None:
        raise ValueError("no labels in the batch: pass loss_fn / label_fn to the ablation probe")
    return F.cross_entropy(logits.float(), labels, reduction="none")


@dataclass
class ClassLoss:
    label: int
    samples: int
    loss: float
    ablated_loss: float

    @property
    def increase(self) -> float:
        return self.ablated_loss - self.loss


@torch.no_grad()
def ablation_probe(
    model: nn.Module,
    dataloader: Iterable,
    tap: str,
    neuron: int,
    value: float,
    reduce_dims: Sequence[int] = (),
    loss_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None,
    label_fn: Callable[[Any], Optional[Tensor]] = default_labels,
    max_batches: Optional[int] = None,
) -> list[ClassLoss]:
    """Per-class mean loss without and with neuron ``neuron`` of ``tap`` set to ``value``.

    ``loss_fn(model, batch)`` returns the loss of every sample (default
    :func:`default_per_sample_loss`); ``label_fn(batch)`` the labels ``(B,)``. The model
    runs in eval mode; its mode is restored and the hook removed afterwards.

    Example:
        >>> stats = load_tap_statistics(ckpt)["hidden.0"]                       # doctest: +SKIP
        >>> rows = ablation_probe(model, val_loader, "hidden.0", 7,
        ...                       value=float(stats.moments.mean[7]))           # doctest: +SKIP
        >>> [(r.label, round(r.increase, 3)) for r in rows]                     # doctest: +SKIP
    """
    loss_fn = loss_fn or default_per_sample_loss
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    sums: dict[int, list[float]] = {}
    try:
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            batch = _move(batch, device)
            labels = label_fn(batch)
            if labels is None or labels.dim() != 1:
                raise ValueError("the ablation probe needs one integer label per sample (label_fn)")
            base = loss_fn(model, batch).double().cpu()
            with ablate_neuron(model, tap, neuron, value, reduce_dims):
                ablated = loss_fn(model, batch).double().cpu()
            for lab in labels.cpu().unique().tolist():
                sel = labels.cpu() == lab
                acc = sums.setdefault(int(lab), [0, 0.0, 0.0])
                acc[0] += int(sel.sum())
                acc[1] += float(base[sel].sum())
                acc[2] += float(ablated[sel].sum())
    finally:
        model.train(was_training)
    return [ClassLoss(lab, int(n), s / n, a / n) for lab, (n, s, a) in sorted(sums.items())]


def format_ablation(rows: Sequence[ClassLoss], tap: str, neuron: int) -> str:
    """A markdown table of :func:`ablation_probe` rows, largest increase first."""
    lines = [f"### Ablation of `{tap}` neuron {neuron} (set to its running mean)", "",
             "| label | samples | loss | ablated loss | increase |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r.increase if not math.isnan(r.increase) else 0.0):
        lines.append(f"| {r.label} | {r.samples} | {r.loss:.4g} | {r.ablated_loss:.4g} | {r.increase:+.4g} |")
    return "\n".join(lines)
