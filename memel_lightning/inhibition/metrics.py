"""The metrics of one tap's training step: declared states, merged over calls and ranks.

Each metric is computed from *states* (docs/method.md §6): sums and maxima declared once
with their reduce op, torchmetrics-style. Every call of the tap within a step adds to
them (a recurrent tap reports all its calls), ranks merge them with one collective
(:func:`reduce_across_ranks`, one ``all_gather`` of one packed vector for all taps), and
the metrics are computed from the merged states only, so a data-parallel run reports
what one process would on the global batch.

A :class:`MetricGroup` declares states, adds one call to them and computes metrics;
:data:`INHIBITION` is the group of every tap. The labelled False Killing Rate (``fkr``,
needs labels) joins as another group through ``MEmeL.metric_groups`` (the extension
point), without touching this one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

# Per-tap metric names (logged as memel/<tap>/<name>); aggregates over taps in TapSet.
SELECTED_FRAC = "selected_frac"
MONO_RATIO = "mono_ratio"
PHI_MEAN = "phi_mean"
PHI_MAX = "phi_max"
KILL_CONCENTRATION = "kill_concentration"
REG_LOSS = "reg_loss"
FKR = "fkr"  # reserved: the labelled False Killing Rate (only when labels are given)
METRICS = (SELECTED_FRAC, MONO_RATIO, PHI_MEAN, PHI_MAX, KILL_CONCENTRATION, REG_LOSS, FKR)
# Counts behind the ratios (returned by end_step, used for the aggregates, not logged).
KILLS = "kills"
CONCENTRATED_KILLS = "concentrated_kills"
MONO_NEURONS = "mono_neurons"
NEURONS = "neurons"
VALUES = "values"
KILLS_PER_NEURON = "kills_per_neuron"  # (F,) the step's kills of every neuron

REDUCE_OPS = ("sum", "max")


@dataclass(frozen=True)
class MetricState:
    """A declared state: ``per_neuron`` states are ``(F,)`` vectors, others scalars.

    ``reduce`` ("sum" or "max") merges both the calls of a step and the ranks."""

    name: str
    reduce: str
    per_neuron: bool = False

    def default(self, size: int, device: torch.device) -> Tensor:
        shape = (size,) if self.per_neuron else ()
        fill = float("-inf") if self.reduce == "max" else 0.0
        return torch.full(shape, fill, dtype=torch.float64, device=device)


@dataclass
class TapCall:
    """What one call of a tap gives the metrics: phi ``(N, F)``, the selection (None
    before the late start), the validity mask, per-row labels and the regulariser's
    penalty ``lambda * sum_selected phi`` (without the 1/N), when there is one."""

    phi: Tensor
    selected: Optional[Tensor]
    mask: Optional[Tensor]
    labels: Optional[Tensor] = None
    penalty: Optional[Tensor] = None


class MetricGroup:
    """Declares states, adds one call to them, computes metrics from merged states."""

    states: tuple[MetricState, ...] = ()

    def update(self, acc: "StepAccumulator", call: TapCall) -> None:
        raise NotImplementedError

    def compute(self, s: dict[str, Tensor], tau_report: float, max_share: float) -> dict[str, Tensor]:
        raise NotImplementedError


class InhibitionMetrics(MetricGroup):
    """selected_frac, mono_ratio, phi_mean, phi_max, kill_concentration, reg_loss (§6)."""

    states = (
        MetricState("values", "sum"),
        MetricState("phi_sum", "sum"),
        MetricState("calls", "max"),               # the same on every rank
        MetricState("inhibited_calls", "max"),
        MetricState("penalty", "sum"),
        MetricState("penalty_rows", "sum"),
        MetricState("valid_per_neuron", "sum", per_neuron=True),
        MetricState("kills_per_neuron", "sum", per_neuron=True),
        MetricState("phi_max_per_neuron", "max", per_neuron=True),
    )

    @torch.no_grad()
    def update(self, acc: "StepAccumulator", call: TapCall) -> None:
        phi, mask = call.phi, call.mask
        n, f = phi.shape
        if mask is None:
            valid = phi.new_full((f,), float(n))  # a fill, not a host-to-device copy
            phi_sum = phi.sum(dtype=torch.float64)
            col_max = phi.amax(dim=0) if n > 0 else phi.new_full((f,), float("-inf"))
        else:
            valid = mask.sum(0, dtype=torch.float64)
            phi_sum = phi.masked_fill(~mask, 0.0).sum(dtype=torch.float64)  # not phi * mask: NaN * 0 is NaN
            col_max = phi.masked_fill(~mask, float("-inf")).amax(dim=0)
        acc.add("values", valid.sum())
        acc.add("phi_sum", phi_sum)
        acc.add("calls", 1.0, count=True)
        acc.add("valid_per_neuron", valid)
        acc.add("phi_max_per_neuron", col_max)
        if call.selected is not None:
            acc.add("inhibited_calls", 1.0, count=True)
            acc.add("kills_per_neuron", call.selected.sum(0, dtype=torch.float64))
        if call.penalty is not None:
            acc.add("penalty", call.penalty)
            acc.add("penalty_rows", float(n))

    def compute(self, s: dict[str, Tensor], tau_report: float, max_share: float) -> dict[str, Tensor]:
        valid, kills_pn, col_max = s["valid_per_neuron"], s["kills_per_neuron"], s["phi_max_per_neuron"]
        has_values = valid > 0
        values = s["values"].clamp(min=1.0)
        neurons = has_values.sum().double()
        mono = ((col_max > tau_report) & has_values).sum().double()
        kills = kills_pn.sum()
        # kill_concentration (docs/method.md §6.3): kills on neurons selected in > max_share of their samples
        concentrated = (kills_pn * (kills_pn > max_share * valid)).sum()
        top = col_max.masked_fill(~has_values, float("-inf")).amax() if col_max.numel() else col_max.new_zeros(())
        out = {  # docs/method.md §6.2
            SELECTED_FRAC: kills / values,
            MONO_RATIO: mono / neurons.clamp(min=1.0),
            PHI_MEAN: s["phi_sum"] / values,
            PHI_MAX: torch.where(neurons > 0, top, top.new_zeros(())),
            KILL_CONCENTRATION: concentrated / kills.clamp(min=1.0),
            KILLS: kills,
            CONCENTRATED_KILLS: concentrated,
            MONO_NEURONS: mono,
            NEURONS: neurons,
            VALUES: s["values"],
            KILLS_PER_NEURON: kills_pn,
        }
        if bool(s["penalty_rows"] > 0):
            # reg_loss (docs/method.md §6.5): sum over calls of lambda * sum_selected phi / N, with N the
            # rows of a call in the global batch (calls of a step have equal N).
            out[REG_LOSS] = s["penalty"] * s["calls"] / s["penalty_rows"]
        return out


INHIBITION = InhibitionMetrics()


class StepAccumulator:
    """The declared states of one tap for one step (float64, on the tap's device)."""

    def __init__(self, groups: Sequence[MetricGroup], device: torch.device) -> None:
        self.groups = list(groups)
        self.declared = {st.name: st for g in self.groups for st in g.states}
        self.device = device
        self.size = 0
        self.values: dict[str, Tensor] = {
            name: st.default(0, device) for name, st in self.declared.items()
        }
        self.counters: dict[str, float] = {}

    def add(self, name: str, value: Union[Tensor, float], count: bool = False) -> None:
        """Merge ``value`` into state ``name`` with the state's reduce op across calls.

        ``count``: a per-step call counter kept on the host (summed over calls, reduced
        across ranks with the state's op)."""
        state = self.declared[name]
        if count:
            self.counters[name] = self.counters.get(name, 0.0) + float(value)
            return
        current = self.values[name]
        if not isinstance(value, Tensor):
            value = torch.tensor(float(value), dtype=torch.float64)
        value = value.to(device=current.device, dtype=torch.float64)
        if state.per_neuron:
            self.resize(value.numel())
            current = self.values[name]
            value = _pad(value, current.numel(), state)
        self.values[name] = current + value if state.reduce == "sum" else torch.maximum(current, value)

    def resize(self, size: int) -> None:
        """Grow every per-neuron state to ``size`` neurons (variable shape, or the ranks'
        largest size before the collective)."""
        if size <= self.size:
            return
        for name, st in self.declared.items():
            if st.per_neuron:
                self.values[name] = _pad(self.values[name], size, st)
        self.size = size

    def snapshot(self) -> dict[str, Tensor]:
        out = dict(self.values)
        for name in self.declared:
            if name in self.counters:
                out[name] = torch.tensor(self.counters[name], dtype=torch.float64, device=self.device)
        return out

    def pack(self) -> Tensor:
        parts = [v.reshape(-1) for v in self.snapshot().values()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=self.device)

    def unpack(self, gathered: Tensor) -> dict[str, Tensor]:
        """``gathered``: ``(world, packed)``; reduce every state with its op."""
        out: dict[str, Tensor] = {}
        offset = 0
        for name, value in self.snapshot().items():
            n = value.numel()
            part = gathered[:, offset: offset + n].reshape((gathered.shape[0],) + tuple(value.shape))
            out[name] = part.sum(0) if self.declared[name].reduce == "sum" else part.amax(0)
            offset += n
        return out



def compute(
    groups: Sequence[MetricGroup], states: dict[str, Tensor], tau_report: float, max_share: float
) -> dict[str, Tensor]:
    """Every group's metrics from merged states."""
    out: dict[str, Tensor] = {}
    for group in groups:
        out.update(group.compute(states, tau_report, max_share))
    return out


def _pad(value: Tensor, size: int, state: MetricState) -> Tensor:
    extra = size - value.numel()
    if extra <= 0:
        return value
    fill = float("-inf") if state.reduce == "max" else 0.0
    return torch.cat([value, value.new_full((extra,), fill)])


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reduce_across_ranks(accumulators: Sequence[StepAccumulator]) -> list[dict[str, Tensor]]:
    """Merge every accumulator's states across ranks with ONE collective (docs/method.md §6.1).

    All ranks must call it with the same taps in the same order; per-neuron states
    must already have the same size on every rank (``StepAccumulator.resize``).
    Without a process group the local states are returned."""
    if not accumulators:
        return []
    if not distributed():
        return [acc.snapshot() for acc in accumulators]
    packed = [acc.pack() for acc in accumulators]
    flat = torch.cat(packed)
    # all_gather, not all_reduce: sums and maxima travel in the same message.
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    stacked = torch.stack(gathered)
    out, offset = [], 0
    for acc, part in zip(accumulators, packed):
        out.append(acc.unpack(stacked[:, offset: offset + part.numel()]))
        offset += part.numel()
    return out


def aggregate(per_tap: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """Aggregates over taps (docs/method.md §6.6): ``mono_ratio`` weighted by neurons, ``kill_concentration``
    by kills (``fkr`` by labelled kills, when a group reports it)."""
    if not per_tap:
        return {}
    results = list(per_tap.values())
    mono = sum(r[MONO_NEURONS] for r in results)
    neurons = sum(r[NEURONS] for r in results)
    kills = sum(r[KILLS] for r in results)
    concentrated = sum(r[CONCENTRATED_KILLS] for r in results)
    out = {
        MONO_RATIO: mono / neurons.clamp(min=1.0),
        KILL_CONCENTRATION: concentrated / kills.clamp(min=1.0),
    }
    labelled = [r for r in results if "false_kills" in r and "labelled_kills" in r]
    if labelled:
        out[FKR] = sum(r["false_kills"] for r in labelled) / sum(r["labelled_kills"] for r in labelled).clamp(min=1.0)
    return out


def scalars(metrics: dict[str, Any]) -> dict[str, Tensor]:
    """Only the logged metric names of a tap's result (no counts, no vectors)."""
    return {k: v for k, v in metrics.items() if k in METRICS}
