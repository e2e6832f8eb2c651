"""Neuron probes on a trained checkpoint: per-tap mono ratio, phi histogram, top neurons.

The statistics come from the checkpoint: :class:`~memel_lightning.MEmeLCallback` saves
every tap's running moments in the checkpoint's callback state (``checkpoint["callbacks"]
["MEmeLCallback{...}"]["taps"][<tap>]``). Over a set of samples (a validation loader),
for every neuron ``i`` of a tap (docs/method.md §3 and §6)::

    phi_i(z) = (z - mu_i)^2 / (v_i + eps * mean_k(v_k))
    max_phi_i = max over the set of phi_i(z)
    mono_ratio = #{i : max_phi_i > tau_report} / #neurons

A neuron *fires* on a sample when its phi there exceeds ``tau_report``; the top neurons
(by ``max_phi``) are listed with the labels of the samples that fire them most and the
indices of the samples with the highest phi.
"""
from __future__ import annotations

import glob
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..inhibition import RunningMoments, TapLayout, attach, monosemantic_scale

HIST_RANGE = (-4.0, 6.0)  # log10(phi) range of the histogram; values outside go to the end bins
HIST_BINS = 100


@dataclass
class TapStatistics:
    """One tap's running statistics read from a checkpoint."""

    name: str
    moments: RunningMoments
    neuron_shape: Optional[tuple[int, ...]]
    step: int


def _callback_states(checkpoint: Mapping[str, Any], source: str) -> list[dict]:
    states = checkpoint.get("callbacks") or {}
    mine = [v for k, v in states.items() if str(k).startswith("MEmeLCallback")]
    if not mine:
        raise KeyError(
            f"{source} holds no MEmeLCallback state (was the model trained without the callback, or "
            f"with enable_checkpointing off?); callback states in it: {sorted(map(str, states))}"
        )
    return mine


def load_tap_statistics(checkpoint: str | Path | Mapping[str, Any]) -> dict[str, TapStatistics]:
    """Every tap's running mean/variance from a checkpoint file (or a loaded checkpoint dict)."""
    source = "the checkpoint"
    if not isinstance(checkpoint, Mapping):
        source = f"checkpoint {checkpoint}"
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    out: dict[str, TapStatistics] = {}
    for state in _callback_states(checkpoint, source):
        for name, tap_state in state["taps"].items():
            moments = RunningMoments(name=name)
            prefix = "moments."
            moments.load_state_dict({k[len(prefix):]: v for k, v in tap_state.items() if k.startswith(prefix)})
            extra = tap_state.get("_extra_state") or {}
            shape = extra.get("neuron_shape")
            out[name] = TapStatistics(
                name=name,
                moments=moments,
                neuron_shape=None if shape is None else tuple(int(s) for s in shape),
                step=int(extra.get("step", 0)),
            )
    return out


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model.probe_forward(batch)`` if defined, else ``model(batch[0])`` for tuple batches
    and ``model(**inputs)`` for dict batches (without ``labels``/``label``)."""
    custom = getattr(model, "probe_forward", None)
    if callable(custom):
        return custom(batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k not in ("labels", "label")})
    return model(batch)


def default_labels(batch: Any) -> Optional[Tensor]:
    """``batch[1]`` for tuple batches, ``batch["labels"]`` (or ``"label"``) for dict batches."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in ("labels", "label"):
            if isinstance(batch.get(key), Tensor):
                return batch[key]
    return None


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_move(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


class _Keep(nn.Module):
    """Keeps a detached copy of what passes through (the tap's output) in ``outputs``."""

    def __init__(self, name: str, outputs: dict[str, Tensor]) -> None:
        super().__init__()
        self.name, self.outputs = name, outputs

    def forward(self, z: Tensor) -> Tensor:
        self.outputs[self.name] = z.detach()
        return z


def _capture(model: nn.Module, taps: Sequence[str], outputs: dict[str, Tensor]):
    modules = dict(model.named_modules())
    missing = [t for t in taps if t not in modules]
    if missing:
        raise KeyError(f"taps {missing} are not modules of {type(model).__name__}")
    return attach(model, [glob.escape(t) for t in taps], lambda name: _Keep(name, outputs))


@dataclass
class TopNeuron:
    index: int                      # flat index of the neuron in the tap
    position: tuple[int, ...]       # the same index on the tap's neuron axes
    max_phi: float
    fire_rate: float                # share of valid samples with phi > tau_report
    label_counts: dict[str, int]    # labels of the samples that fire it, most common first
    purity: float                   # share of its firing samples carrying its most common label
    top_samples: list[int]          # set indices of the samples with the highest phi
    top_sample_labels: list[Optional[int]]


@dataclass
class ProbeResult:
    """One tap's probe over a set of samples."""

    tap: str
    neurons: int
    mono_ratio: float
    max_phi: np.ndarray
    hist_counts: np.ndarray
    hist_edges: np.ndarray          # edges in log10(phi)
    top: list[TopNeuron] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "tap": self.tap,
            "neurons": self.neurons,
            "mono_ratio": self.mono_ratio,
            "mono_neurons": int(round(self.mono_ratio * self.neurons)),
            "max_phi_max": float(np.max(self.max_phi)) if self.max_phi.size else math.nan,
            "max_phi_median": float(np.median(self.max_phi)) if self.max_phi.size else math.nan,
            "top": [t.__dict__ for t in self.top],
        }


def _samples(layout: TapLayout, z: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor], int]:
    """``(N', F)`` values, their mask and the number of pooled rows per sample."""
    return layout.to_samples(z), layout.mask_to_samples(mask, z), layout.samples_per_item(z)


@torch.no_grad()
def probe_neurons(
    model: nn.Module,
    dataloader: Iterable,
    statistics: Mapping[str, TapStatistics],
    taps: Optional[Sequence[str]] = None,
    eps: float = 0.01,
    tau_report: float = 9.0,
    reduce_dims: Sequence[int] = (),
    variable_shape: bool = False,
    top: int = 10,
    top_samples: int = 5,
    forward_fn: Callable[[nn.Module, Any], Any] = default_forward,
    label_fn: Callable[[Any], Optional[Tensor]] = default_labels,
    max_batches: Optional[int] = None,
) -> dict[str, ProbeResult]:
    """Probe the neurons of ``taps`` (default: all taps in ``statistics``) over ``dataloader``.

    Two passes over the loader in eval mode: the first gives every neuron's max phi and
    the phi histogram, the second the labels and samples that fire the ``top`` neurons.
    ``reduce_dims`` must be those the model was trained with (a neuron is then an index
    of the kept axes and every pooled position is a sample); ``variable_shape`` likewise
    (dynamically padded batches cover a prefix of the positions). If the model defines
    ``memel_mask(batch)`` masked positions are left out. The model's mode is restored.

    Example:
        >>> stats = load_tap_statistics("runs/x/checkpoints/last.ckpt")        # doctest: +SKIP
        >>> res = probe_neurons(model, dm.val_dataloader(), stats)             # doctest: +SKIP
        >>> res["hidden.0"].mono_ratio                                         # doctest: +SKIP
    """
    taps = list(taps or statistics)
    missing = [t for t in taps if t not in statistics]
    if missing:
        raise KeyError(f"no statistics for taps {missing} in the checkpoint; it has {sorted(statistics)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shapers = {t: TapLayout(tuple(reduce_dims), t) for t in taps}
    get_mask = getattr(model, "memel_mask", None)
    was_training = model.training
    model.eval()
    outputs: dict[str, Tensor] = {}
    capture = _capture(model, taps, outputs)
    edges = np.linspace(*HIST_RANGE, HIST_BINS + 1)
    max_phi: dict[str, Tensor] = {}
    hist = {t: torch.zeros(HIST_BINS, dtype=torch.float64) for t in taps}
    fires: dict[str, Tensor] = {}
    valid_counts: dict[str, Tensor] = {}

    def batches():
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                return
            yield _move(batch, device)

    def tap_phi(t: str, batch: Any) -> tuple[Tensor, Optional[Tensor], int]:
        z = outputs[t]
        mask = get_mask(batch) if callable(get_mask) else None
        if mask is not None and (mask.dim() > z.dim() or tuple(mask.shape) != tuple(z.shape[: mask.dim()])):
            mask = None
        z2, m2, per_sample = _samples(shapers[t], z, mask)
        moments = statistics[t].moments.to(z2.device)
        moments.variable_size = variable_shape
        if z2.shape[1] > moments.num_neurons or (z2.shape[1] < moments.num_neurons and not moments.variable_size):
            raise ValueError(
                f"tap {t!r}: the output {tuple(z.shape)} gives {z2.shape[1]} neurons with reduce_dims="
                f"{tuple(reduce_dims)}, the checkpoint's statistics have {moments.num_neurons}; pass the "
                "reduce_dims the model was trained with"
            )
        phi = monosemantic_scale(z2, moments, eps)
        if m2 is not None:
            phi = phi.masked_fill(~m2, float("nan"))
        return phi, m2, per_sample

    try:
        # pass 1: max phi, histogram, fire counts
        for batch in batches():
            outputs.clear()
            forward_fn(model, batch)
            for t in taps:
                if t not in outputs:
                    raise RuntimeError(f"tap {t!r} produced no output in the forward pass")
                phi, m2, _ = tap_phi(t, batch)
                filled = torch.nan_to_num(phi, nan=-math.inf)
                col = filled.amax(dim=0).float().cpu()
                firing = (filled > tau_report).sum(0).cpu()
                valid = (m2.sum(0) if m2 is not None else torch.full((phi.shape[1],), phi.shape[0])).cpu()
                if t not in max_phi:  # sized by the statistics: a batch may cover a prefix of them
                    size = statistics[t].moments.num_neurons
                    max_phi[t] = torch.full((size,), -math.inf)
                    fires[t] = torch.zeros(size, dtype=torch.long)
                    valid_counts[t] = torch.zeros(size, dtype=torch.long)
                n = col.numel()
                max_phi[t][:n] = torch.maximum(max_phi[t][:n], col)
                fires[t][:n] += firing
                valid_counts[t][:n] += valid.long()
                values = phi[~torch.isnan(phi)].double().clamp(min=1e-30).log10().clamp(*HIST_RANGE)
                hist[t] += torch.histc(values.cpu(), bins=HIST_BINS, min=HIST_RANGE[0], max=HIST_RANGE[1]).double()
        if not max_phi:
            raise ValueError("the dataloader gave no batch")

        # pass 2: labels and samples of the top neurons
        tops = {t: torch.argsort(max_phi[t], descending=True)[:top] for t in taps}
        label_hits: dict[str, list[Counter]] = {t: [Counter() for _ in tops[t]] for t in taps}
        best: dict[str, list[list[tuple[float, int, Optional[int]]]]] = {t: [[] for _ in tops[t]] for t in taps}
        offset = 0
        for batch in batches():
            outputs.clear()
            forward_fn(model, batch)
            labels = label_fn(batch)
            labels = None if labels is None else labels.detach().cpu()
            b = None
            for t in taps:
                phi, _, per_sample = tap_phi(t, batch)
                b = phi.shape[0] // per_sample
                idx = tops[t].to(phi.device)
                idx = idx[idx < phi.shape[1]]
                sel = torch.nan_to_num(phi[:, idx], nan=-math.inf).reshape(b, per_sample, -1).amax(dim=1).cpu()
                for j in range(idx.numel()):
                    col = sel[:, j]
                    if labels is not None and labels.dim() == 1:
                        for lab in labels[col > tau_report].tolist():
                            label_hits[t][j][str(lab)] += 1
                    k = min(top_samples, col.numel())
                    vals, rows = torch.topk(col, k)
                    for v, r in zip(vals.tolist(), rows.tolist()):
                        lab = int(labels[r]) if labels is not None and labels.dim() == 1 else None
                        best[t][j].append((v, offset + r, lab))
                    best[t][j] = sorted(best[t][j], key=lambda e: -e[0])[:top_samples]
            offset += b or 0
    finally:
        capture.remove()
        model.train(was_training)

    results: dict[str, ProbeResult] = {}
    for t in taps:
        mp = max_phi[t].numpy().astype(np.float64)
        seen = valid_counts[t].numpy() > 0
        mp = mp[seen] if not seen.all() else mp
        kept_shape = _kept_shape(statistics[t].neuron_shape, reduce_dims)
        top_list = []
        for j, flat in enumerate(tops[t].tolist()):
            counts = label_hits[t][j]
            total = sum(counts.values())
            top_list.append(
                TopNeuron(
                    index=flat,
                    position=_unravel(flat, kept_shape),
                    max_phi=float(max_phi[t][flat]),
                    fire_rate=float(fires[t][flat]) / max(float(valid_counts[t][flat]), 1.0),
                    label_counts=dict(counts.most_common()),
                    purity=(counts.most_common(1)[0][1] / total) if total else math.nan,
                    top_samples=[e[1] for e in best[t][j]],
                    top_sample_labels=[e[2] for e in best[t][j]],
                )
            )
        results[t] = ProbeResult(
            tap=t,
            neurons=int(mp.size),
            mono_ratio=float((mp > tau_report).mean()) if mp.size else math.nan,
            max_phi=mp,
            hist_counts=hist[t].numpy(),
            hist_edges=edges,
            top=top_list,
        )
    return results


def _kept_shape(neuron_shape: Optional[tuple[int, ...]], reduce_dims: Sequence[int]) -> Optional[tuple[int, ...]]:
    if neuron_shape is None:
        return None
    return tuple(s for d, s in enumerate(neuron_shape) if d not in set(reduce_dims))


def _unravel(flat: int, shape: Optional[tuple[int, ...]]) -> tuple[int, ...]:
    if not shape or len(shape) <= 1 or flat >= int(np.prod(shape)):
        return (flat,)
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def write_probe_report(results: Mapping[str, ProbeResult], out_dir: str | Path, tau_report: float = 9.0) -> dict[str, Path]:
    """``probe.json``, ``probe.md`` and ``phi_hist.png`` (one histogram of log10 phi per tap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "probe.json"
    json_path.write_text(json.dumps({t: r.summary() for t, r in results.items()}, indent=1, default=str))
    lines = ["# Neuron probe", "", f"A neuron is monosemantic when its max phi over the set exceeds tau_report={tau_report}.", "",
             "| tap | neurons | mono ratio | median max phi | max phi |", "|---|---|---|---|---|"]
    for t, r in results.items():
        s = r.summary()
        lines.append(f"| `{t}` | {r.neurons} | {r.mono_ratio:.4f} | {s['max_phi_median']:.2f} | {s['max_phi_max']:.2f} |")
    for t, r in results.items():
        lines += ["", f"## `{t}`: top neurons by max phi", "",
                  "| neuron | max phi | fire rate | purity | labels that fire it (count) | top samples (label) |",
                  "|---|---|---|---|---|---|"]
        for n in r.top:
            labels = ", ".join(f"{k}: {v}" for k, v in list(n.label_counts.items())[:5])
            samples = ", ".join(f"{i} ({lab})" for i, lab in zip(n.top_samples, n.top_sample_labels))
            purity = "" if math.isnan(n.purity) else f"{n.purity:.2f}"
            lines.append(f"| {n.position} | {n.max_phi:.2f} | {n.fire_rate:.4f} | {purity} | {labels} | {samples} |")
    lines += ["", "![phi histogram](phi_hist.png)", ""]
    md_path = out / "probe.md"
    md_path.write_text("\n".join(lines))
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    for ax, (t, r) in zip(axes[0], results.items()):
        centers = (r.hist_edges[:-1] + r.hist_edges[1:]) / 2
        ax.bar(centers, r.hist_counts, width=r.hist_edges[1] - r.hist_edges[0], color="#6baed6")
        ax.axvline(math.log10(tau_report), color="k", ls="--", lw=1, label=f"tau_report={tau_report}")
        ax.set_yscale("log")
        ax.set_xlabel("log10 phi")
        ax.set_title(f"{t}: mono ratio {r.mono_ratio:.3f}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png_path = out / "phi_hist.png"
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return {"json": json_path, "md": md_path, "png": png_path}
