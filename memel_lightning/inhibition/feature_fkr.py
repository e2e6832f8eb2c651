"""The labelled False Killing Rate of L2E (L2E Eq. 3-4; docs/method.md §6.4, docs/l2e.md): running state and counts.

L2E defines a neuron's *relatively monosemantic feature* (Eq. 3) on a data set whose
inputs carry feature labels ``l`` (classes ``C_l``)::

    l*_j = argmax_l  sum_{z in C_l} (z_j - z_bar_j)^2 / (|C_l| * S_j^2)

the label on which the neuron's *mean* Monosemantic Scale is largest, and the False
Killing Rate (Eq. 4) as the share of inhibited (input, neuron) pairs whose input does
not carry the neuron's own feature::

    FKR = sum_{i,j} 1(label_i != l*_j) 1(selected_ij) / sum_{i,j} 1(selected_ij)

The paper computes both offline, on a fixed data set. Online, :class:`FeatureFKR` keeps
for every label ``c`` and neuron ``j`` the phi *mass* ``M[c, j]`` (sum of phi of the
valid values of ``j`` on inputs labelled ``c``) and *count* ``K[c, j]``, so that
``l*_j = argmax_c M[c, j] / K[c, j]`` is exactly Eq. 3 with phi standing for
``(z - z_bar)^2 / S^2`` (the ``eps`` variance compensation of phi is the same for every
label of a neuron, so it does not change the argmax). Both are decayed like the running
moments (docs/method.md §2), so ``l*`` follows training: plain sums for the first
``forget_steps`` merged batches, then ``M <- g M + M_batch``, ``K <- g K + K_batch`` with
``g = n_f / (n_f + 1)``, which weighs a new batch by ``1 / (n_f + 1)`` in the per-label
mean at steady state, as the moments' forgetting does.

Choices where the paper is silent (all documented in docs/l2e.md):

- phi is the tap's phi at the time of the batch (running mean and variance), not the
  mean and variance of a fixed data set; a batch's kills are judged by the ``l*`` of
  the batches *before* it, then the batch is merged (out of sample: an ``l*`` that
  includes the killed values' own phi leans towards their labels and biases FKR down);
- a label never seen for a neuron (count 0) cannot be its ``l*``; ties go to the
  smallest label; a neuron with no labelled value yet has no ``l*`` and its kills are
  not counted;
- labels are integers ``>= 0``; a negative label (e.g. ``-100``, padding) marks an
  unlabelled value: it neither feeds ``M, K`` nor counts as a kill in Eq. 4. So the
  returned ``kills`` are the *labelled* kills, the denominator of Eq. 4.

Labels are per sample row ``(N,)`` or per value ``(N, F)`` (when a label varies along a
neuron axis, e.g. per position without ``reduce_dims``). With ``sync_dist`` the batch's
``M, K`` (and the label/neuron sizes) are summed across ranks before the merge, so every
rank holds the same ``l*``; the kill counts are per rank (sums: the caller reduces them
with the step's metrics). Cost: one ``scatter_add`` pass over the ``(N, F)`` values,
and one host sync per call to size the label axis unless ``num_labels`` is given.

Example:
    >>> fkr = FeatureFKR(forget_steps=10)
    >>> phi = torch.tensor([[9.0, 0.1], [0.2, 8.0], [0.1, 0.3]])   # 3 samples, 2 neurons
    >>> labels = torch.tensor([0, 1, 1])
    >>> selected = phi > 5
    >>> fkr(phi, selected, labels)            # first batch: no l* yet, nothing counted
    (tensor(0., dtype=torch.float64), tensor(0., dtype=torch.float64))
    >>> fkr.feature()[0].tolist()              # l*: neuron 0 -> label 0, neuron 1 -> label 1
    [0, 1]
    >>> false, kills = fkr(phi, selected, torch.tensor([1, 1, 1]))   # both kills now on label 1
    >>> float(false), float(kills)
    (1.0, 2.0)
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .metrics import FKR, MetricGroup, MetricState, StepAccumulator, TapCall

FALSE_KILLS = "false_kills"
LABELLED_KILLS = "labelled_kills"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class FeatureFKR(nn.Module):
    """Per-label running phi mass and count of one tap; ``l*`` (Eq. 3) and false kills (Eq. 4).

    ``forward(phi, selected, labels, mask=None)`` judges the batch's kills by the
    current ``l*``, then merges the batch, and returns the batch's ``(false_kills,
    kills)`` (float64 scalars on phi's device); :meth:`count_kills` and :meth:`update`
    do the two halves. Per-row labels are merged with a one-hot matrix product (no
    ``(N, F)`` index tensor); a non-finite phi anywhere skips the batch's merge, as the
    moments skip non-finite batches. ``phi`` is ``(N, F)`` (samples x
    neurons), ``selected`` a bool ``(N, F)`` selection (or ``None``: nothing killed),
    ``labels`` an integer ``(N,)`` or ``(N, F)``, ``mask`` a bool ``(N, F)`` of valid values.
    State (``mass``, ``count``: ``(C, F)`` float32; ``updates``) is in ``state_dict``.
    """

    def __init__(
        self,
        forget_steps: int = 10,
        *,
        num_labels: Optional[int] = None,
        sync_dist: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        if forget_steps < 1:
            raise ValueError(f"forget_steps must be >= 1, got {forget_steps}")
        if num_labels is not None and num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 or None, got {num_labels}")
        self.forget_steps = int(forget_steps)
        self.num_labels = num_labels
        self.sync_dist = bool(sync_dist)
        self.name = name
        self.register_buffer("mass", torch.zeros(0, 0))
        self.register_buffer("count", torch.zeros(0, 0))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, int]:
        """``(labels, neurons)`` of the state."""
        return int(self.mass.shape[0]), int(self.mass.shape[1])

    def _grow(self, labels: int, neurons: int) -> None:
        c0, f0 = self.shape
        if labels <= c0 and neurons <= f0:
            return
        c, f = max(c0, labels), max(f0, neurons)
        for key in ("mass", "count"):
            old = getattr(self, key)
            new = old.new_zeros(c, f)
            new[:c0, :f0] = old
            setattr(self, key, new)

    def _check(self, values: Tensor, labels: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Validate; the labels on ``values``' device as ``(N, 1)`` (per row) or ``(N, F)``."""
        if values.dim() != 2:
            raise ValueError(f"tap {self.name!r}: FeatureFKR expects (N, F) values, got {tuple(values.shape)}")
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"tap {self.name!r}: feature labels must be integers, got {labels.dtype}")
        labels = labels.to(values.device)
        if labels.dim() == 1 and labels.shape[0] == values.shape[0]:
            labels = labels[:, None]  # broadcasts over the neurons
        elif tuple(labels.shape) != tuple(values.shape):
            raise ValueError(
                f"tap {self.name!r}: labels of shape {tuple(labels.shape)} match neither the samples "
                f"({values.shape[0]},) nor the values {tuple(values.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(values.shape):
            raise ValueError(f"tap {self.name!r}: mask of shape {tuple(mask.shape)} != values {tuple(values.shape)}")
        return labels

    # ------------------------------------------------------------------ Eq. 3
    @torch.no_grad()
    def update(self, phi: Tensor, labels: Tensor, mask: Optional[Tensor] = None) -> None:
        """Merge one batch into the per-label phi mass and count (decayed, see module doc)."""
        labels = self._check(phi, labels, mask)
        n, f = phi.shape
        if self.num_labels is not None:
            c = self.num_labels
        else:  # one host sync: the label axis is sized by the largest label seen
            c = int(labels.max()) + 1 if labels.numel() else 0
        c = max(c, self.shape[0])
        if self.sync_dist and _distributed():
            size = torch.tensor([c, f], device=phi.device)
            dist.all_reduce(size, op=dist.ReduceOp.MAX)
            c, f_all = int(size[0]), int(size[1])
        else:
            f_all = f
        self._grow(c, f_all)
        f_all = self.shape[1]  # a batch narrower than the state (dynamic padding) fills its first f
        if self.mass.device != phi.device:
            self.mass, self.count = self.mass.to(phi.device), self.count.to(phi.device)
            self.updates = self.updates.to(phi.device)
        batch = phi.new_zeros((2, c, f_all), dtype=torch.float32)
        x = phi.detach().float()
        m = None if mask is None else mask.to(device=phi.device, dtype=torch.bool)
        if labels.shape[1] == 1:
            # one label per row: (C, N) one-hot @ (N, F), no (N, F) index tensor
            onehot = (labels == torch.arange(c, device=phi.device)[None, :]).float()  # (N, C); <0 or >=C: none
            xm = x if m is None else x.masked_fill(~m, 0.0)
            batch[0, :, :f] = onehot.T @ xm
            batch[1, :, :f] = onehot.sum(0)[:, None] if m is None else onehot.T @ m.float()
        else:
            valid = (labels >= 0) & (labels < c)
            if m is not None:
                valid &= m
            index = labels.clamp(0, max(c - 1, 0)).long()
            # masked_fill, not a product: a NaN in an invalid position must not leak in
            batch[0, :, :f].scatter_add_(0, index, x.masked_fill(~valid, 0.0))
            batch[1, :, :f].scatter_add_(0, index, valid.float())
        if self.sync_dist and _distributed():
            dist.all_reduce(batch, op=dist.ReduceOp.SUM)
        finite = torch.isfinite(batch).all()  # a non-finite batch is skipped (no host sync)
        # cumulative for the first n_f batches, then forgetting (decided on the device: no sync)
        decay = torch.where(self.updates >= self.forget_steps, self.forget_steps / (self.forget_steps + 1.0), 1.0)
        self.mass.copy_(torch.where(finite, self.mass * decay + batch[0], self.mass))
        self.count.copy_(torch.where(finite, self.count * decay + batch[1], self.count))
        self.updates.add_(1)

    @torch.no_grad()
    def feature(self) -> tuple[Tensor, Tensor]:
        """``(l_star, known)``: each neuron's feature (Eq. 3, ties -> smallest label) and
        whether it has one (some labelled value merged)."""
        mean = self.mass / self.count.clamp(min=1e-30)
        mean = mean.masked_fill(self.count <= 0, float("-inf"))
        if mean.shape[0] == 0:
            empty = torch.zeros(mean.shape[1], dtype=torch.long, device=mean.device)
            return empty, empty.bool()
        return mean.argmax(0), (self.count > 0).any(0)

    # ------------------------------------------------------------------ Eq. 4
    @torch.no_grad()
    def count_kills(
        self, selected: Optional[Tensor], labels: Tensor, mask: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        """The batch's ``(false_kills, kills)`` under the current ``l*`` (float64 scalars).

        A kill is a selected valid value with a label ``>= 0`` on a neuron that has an
        ``l*``; it is false when its label is not ``l*``."""
        if selected is None:
            zero = torch.zeros((), dtype=torch.float64, device=self.mass.device)
            return zero, zero.clone()
        labels = self._check(selected, labels, mask)
        f = selected.shape[1]
        l_star, known = self.feature()
        if l_star.numel() < f:  # neurons never merged: no feature
            pad = f - l_star.numel()
            l_star = torch.cat([l_star, l_star.new_zeros(pad)])
            known = torch.cat([known, known.new_zeros(pad)])
        l_star, known = l_star[:f].to(labels.device), known[:f].to(labels.device)
        kills = selected.to(torch.bool) & (labels >= 0) & known[None, :]  # (N, F): labels broadcast
        if mask is not None:
            kills &= mask.to(device=kills.device, dtype=torch.bool)
        false = kills & (labels != l_star[None, :])
        return false.sum(dtype=torch.float64), kills.sum(dtype=torch.float64)

    def forward(
        self, phi: Tensor, selected: Optional[Tensor], labels: Tensor, mask: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor]:
        # Count first, then merge: the batch's kills are judged by the l* of the batches
        # before it (out of sample). Judging them by an l* that includes their own phi
        # biases FKR down: 0.70 instead of 1 - 1/C = 0.75 on the random-label stream of
        # tests/test_l2e_feature_fkr.py.
        counts = self.count_kills(selected, labels, mask)
        self.update(phi, labels, mask)
        return counts

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        if not any(k.startswith(prefix) for k in state_dict):
            return  # a checkpoint from before labelled FKR existed: start empty
        # The state is sized lazily: adopt the saved sizes before the default copy.
        for key in ("mass", "count"):
            saved = state_dict.get(prefix + key)
            if saved is not None:
                current = getattr(self, key)
                setattr(self, key, torch.empty_like(saved, device=current.device, dtype=current.dtype))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        c, f = self.shape
        return f"forget_steps={self.forget_steps}, labels={c}, neurons={f}"


def labels_to_rows(labels: Tensor, z: Tensor, reduce_dims: tuple[int, ...], name: str = "") -> Tensor:
    """Labels over a prefix of ``z``'s axes as one label per sample row ``(N,)`` when they
    vary only over the batch and pooled axes (e.g. ``(B,)``, or ``(B, L)`` with
    ``reduce_dims=(0,)``), else one per value ``(N, F)`` (rows as :class:`TapLayout` lays them).

    Example:
        >>> z = torch.zeros(2, 3, 4)                      # B=2, L=3, H=4; tokens are samples
        >>> labels_to_rows(torch.tensor([[0, 1, 2], [3, 4, 5]]), z, (0,)).tolist()
        [0, 1, 2, 3, 4, 5]
    """
    if labels.dim() == 0 or labels.dim() > z.dim() or tuple(labels.shape) != tuple(z.shape[: labels.dim()]):
        raise ValueError(
            f"tap {name!r}: labels of shape {tuple(labels.shape)} do not match the leading axes of the output "
            f"{tuple(z.shape)}"
        )
    labels = labels.to(z.device)
    covered = set(range(labels.dim() - 1))  # axes of S the labels span
    if covered <= set(reduce_dims):
        # the labelled axes are the first pooled axes (reduce_dims is sorted): expand over the others
        pooled = [z.shape[1 + d] for d in reduce_dims]
        lab = labels.reshape(tuple(labels.shape) + (1,) * (1 + len(pooled) - labels.dim()))
        return lab.expand(z.shape[0], *pooled).reshape(-1)
    full = labels.reshape(tuple(labels.shape) + (1,) * (z.dim() - labels.dim())).expand(z.shape)
    kept = [d for d in range(z.dim() - 1) if d not in reduce_dims]
    perm = [0] + [1 + d for d in reduce_dims] + [1 + d for d in kept]
    n = z.shape[0]
    for d in reduce_dims:
        n *= z.shape[1 + d]
    return full.permute(perm).reshape(n, -1)


class LabelledFKRMetrics(MetricGroup):
    """The step's labelled False Killing Rate (Eq. 4) of one tap, as declared states.

    ``update`` counts the call's kills against the tap's :class:`FeatureFKR` (its ``l*``
    from the batches before); ``compute`` gives ``fkr = false_kills / labelled_kills``
    (0 when nothing labelled was killed) only when an inhibited call of the step had
    labels, plus the two counts (summed over calls and ranks; the aggregate over taps
    pools them)."""

    states = (
        MetricState(FALSE_KILLS, "sum"),
        MetricState(LABELLED_KILLS, "sum"),
        MetricState("labelled_inhibited_calls", "max"),
    )

    def __init__(self, feature: FeatureFKR) -> None:
        self.feature = feature

    @torch.no_grad()
    def update(self, acc: StepAccumulator, call: TapCall) -> None:
        if call.labels is None or call.selected is None:
            return
        false, kills = self.feature.count_kills(call.selected, call.labels, call.mask)
        acc.add(FALSE_KILLS, false)
        acc.add(LABELLED_KILLS, kills)
        acc.add("labelled_inhibited_calls", 1.0, count=True)

    def compute(self, s: dict[str, Tensor], tau_report: float, max_share: float) -> dict[str, Tensor]:
        if not bool(s["labelled_inhibited_calls"] > 0):
            return {}
        return {
            FKR: s[FALSE_KILLS] / s[LABELLED_KILLS].clamp(min=1.0),
            FALSE_KILLS: s[FALSE_KILLS],
            LABELLED_KILLS: s[LABELLED_KILLS],
        }
