"""MEmeL: one tap's statistics, selection and inhibition (SPEC sections 1-5, 8)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .moments import RunningMoments
from .scale import monosemantic_scale, phi_from, scale_parameters
from .selectors import Selector, build_selector
from .strategies import Strategy, TapStatistics, build_strategy

HISTOGRAM_SAMPLES = 1 << 16


class MEmeL(nn.Module):
    r"""Watch one tap's activations and inhibit its monosemantic ones.

    ``forward(z, mask=None)`` takes the tap's output ``z`` of shape ``(B, *S)`` (every
    index of ``S`` is a neuron) and returns a tensor of the same shape and dtype. In
    training it

    1. merges the batch into the running moments (Lemma 3.2, :class:`RunningMoments`);
    2. scores every value with the Monosemantic Scale
       ``phi = (z - mu)^2 / (v + eps * mean_k(v_k))``, using the statistics after the
       merge (``score_with="updated"``) or before it (``"previous"``);
    3. after ``late_start`` training batches, selects values (``topk`` per sample,
       ``threshold`` or ``moving_threshold``) and applies the inhibition ``strategy``.

    In eval mode it is the identity unless ``active_in_eval`` (then it selects and
    inhibits with frozen statistics). Statistics are float32 and only move in training.

    ``reduce_dims`` (indices into ``S``) pools those axes into the batch axis, e.g.
    ``reduce_dims=(0,)`` on a ``(B, L, H)`` tap makes every token a sample and every
    hidden unit a neuron. ``mask`` (bool or 0/1, shape a prefix of ``z.shape`` such as
    ``(B, L)``) marks valid positions: masked values never enter the statistics and are
    never selected. ``variable_shape`` lets the first axis of ``S`` vary between
    batches (dynamic padding): positions a batch lacks count as masked and new
    positions start fresh statistics.

    When ``record_metrics`` is true (the default; the callback turns it on only on
    logging steps) the step's metrics are kept in ``last_metrics``, computed from the
    phi and selection already at hand: ``selected_frac``, ``mono_ratio`` (share of
    neurons whose batch-max phi exceeds ``tau_report``), ``phi_mean``, ``phi_max`` and
    ``fkr`` (False Killing Rate: share of kills on neurons selected in more than
    ``max_share`` of the step's samples), plus the raw counts behind them; and
    ``last_kills_per_neuron``, the step's kills (selected valid values) of each neuron,
    ``(prod S_kept,)`` float, or ``None`` when nothing was inhibited (to compare FKR with
    a ground truth, e.g. :class:`~memel_lightning.models.PolysemanticToy`).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> memel = MEmeL(k=1, late_start=0)
        >>> z = torch.randn(8, 4, requires_grad=True)
        >>> out = memel(z)
        >>> out.shape, int((out != z).sum())   # one value per sample became the mean
        (torch.Size([8, 4]), 8)
    """

    def __init__(
        self,
        selector: Union[str, Selector] = "topk",
        k: int = 1,
        tau: Optional[float] = None,
        target_ratio: float = 0.02,
        strategy: Union[str, Strategy] = "reverse",
        delta: float = 1.0,
        forget_steps: int = 10,
        late_start: int = 10,
        eps: float = 0.01,
        score_with: str = "updated",
        reduce_dims: Sequence[int] = (),
        active_in_eval: bool = False,
        *,
        variable_shape: bool = False,
        tau_report: float = 9.0,
        max_share: float = 0.1,
        reg_lambda: float = 1e-3,
        nonfinite: str = "skip",
        sync_dist: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        if score_with not in ("updated", "previous"):
            raise ValueError(f"score_with must be 'updated' or 'previous', got {score_with!r}")
        if late_start < 0:
            raise ValueError(f"late_start must be >= 0, got {late_start}")
        self.reduce_dims = tuple(sorted(int(d) for d in reduce_dims))
        if len(set(self.reduce_dims)) != len(self.reduce_dims) or any(d < 0 for d in self.reduce_dims):
            raise ValueError(f"reduce_dims must be distinct non-negative axes of S, got {tuple(reduce_dims)}")
        if variable_shape and 0 in self.reduce_dims:
            variable_shape = False  # the varying axis is pooled into the samples: nothing varies
        self.name = name
        self.moments = RunningMoments(
            forget_steps, sync_dist=sync_dist, variable_size=variable_shape, nonfinite=nonfinite, name=name
        )
        self.selector = selector if isinstance(selector, Selector) else build_selector(
            selector, k=k, tau=tau, target_ratio=target_ratio
        )
        self.strategy = strategy if isinstance(strategy, Strategy) else build_strategy(
            strategy, delta=delta, reg_lambda=reg_lambda
        )
        self.late_start = int(late_start)
        self.eps = float(eps)
        self.score_with = score_with
        self.active_in_eval = bool(active_in_eval)
        self.variable_shape = bool(variable_shape)
        self.tau_report = float(tau_report)
        self.max_share = float(max_share)
        self.sync_dist = sync_dist
        self.record_metrics = True
        self.record_histogram = False
        self.last_metrics: dict[str, Tensor] = {}
        self.last_kills_per_neuron: Optional[Tensor] = None
        self.last_phi_sample: Optional[Tensor] = None
        # Plain Python state (saved through get_extra_state) so that no step needs a
        # device sync: training batches seen, and the per-sample shape of the output.
        self.step = 0
        self.neuron_shape: Optional[tuple[int, ...]] = None

    def get_extra_state(self) -> dict:
        return {"step": self.step, "neuron_shape": self.neuron_shape}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])
        shape = state.get("neuron_shape")
        self.neuron_shape = None if shape is None else tuple(int(s) for s in shape)

    # ------------------------------------------------------------------ plumbing
    @property
    def sync_dist(self) -> bool:
        return self.moments.sync_dist

    @sync_dist.setter
    def sync_dist(self, value: bool) -> None:
        self.moments.sync_dist = bool(value)
        self.selector.sync_dist = bool(value)

    @property
    def record_metrics(self) -> bool:
        """Whether this step keeps metrics (also tells the strategy, e.g. ``Regularize.last_loss``)."""
        return self._record_metrics

    @record_metrics.setter
    def record_metrics(self, value: bool) -> None:
        self._record_metrics = bool(value)
        self.strategy.record_metrics = bool(value)

    @property
    def inhibiting(self) -> bool:
        """Whether the next training batch is past the late start."""
        return self.step >= self.late_start

    def _layout(self, z: Tensor) -> tuple[list[int], bool]:
        """Permutation that puts (batch, pooled axes, neuron axes) in order."""
        ndim_s = z.dim() - 1
        if any(d >= ndim_s for d in self.reduce_dims):
            raise ValueError(
                f"tap {self.name!r}: reduce_dims={self.reduce_dims} but the output {tuple(z.shape)} has "
                f"only {ndim_s} neuron axes"
            )
        kept = [d for d in range(ndim_s) if d not in self.reduce_dims]
        perm = [0] + [1 + d for d in self.reduce_dims] + [1 + d for d in kept]
        return perm, perm == list(range(z.dim()))

    def _check_shape(self, z: Tensor) -> None:
        if z.dim() < 2:
            raise ValueError(f"tap {self.name!r}: expected an output of shape (B, *S), got {tuple(z.shape)}")
        shape = tuple(z.shape[1:])
        saved = self.neuron_shape
        if saved is None:
            self.neuron_shape = shape
            return
        if self.variable_shape:
            same = len(saved) == len(shape) and saved[1:] == shape[1:]
        else:
            same = saved == shape
        if not same:
            hint = "" if self.variable_shape else " (set variable_shape=True for dynamically padded sequences)"
            raise ValueError(
                f"tap {self.name!r}: output shape per sample changed from {saved} to {shape}; "
                f"a tap's neurons must stay the same{hint}"
            )
        if self.variable_shape and shape[0] > saved[0]:
            self.neuron_shape = shape

    def _as_samples(self, z: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor], list[int], bool]:
        perm, identity = self._layout(z)
        npool = 1 + len(self.reduce_dims)
        zp = z if identity else z.permute(perm)
        n = 1
        for s in zp.shape[:npool]:
            n *= s
        z2 = zp.reshape(n, -1)
        m2 = None
        if mask is not None:
            if mask.dim() > z.dim() or tuple(mask.shape) != tuple(z.shape[: mask.dim()]):
                raise ValueError(
                    f"tap {self.name!r}: mask of shape {tuple(mask.shape)} does not match the leading axes "
                    f"of the output {tuple(z.shape)}"
                )
            m = mask.to(device=z.device, dtype=torch.bool)
            m = m.reshape(tuple(m.shape) + (1,) * (z.dim() - m.dim())).expand(z.shape)
            m2 = (m if identity else m.permute(perm)).reshape(n, -1)
        return z2, m2, perm, identity

    @staticmethod
    def _restore(out2: Tensor, z: Tensor, perm: list[int], identity: bool) -> Tensor:
        if identity:
            return out2.reshape(z.shape)
        permuted_shape = [z.shape[p] for p in perm]
        inverse = [perm.index(i) for i in range(len(perm))]
        return out2.reshape(permuted_shape).permute(inverse).contiguous()

    # ------------------------------------------------------------------ forward
    def forward(self, z: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if not z.is_floating_point():
            raise TypeError(f"tap {self.name!r}: MEmeL needs a floating-point output, got {z.dtype}")
        training = self.training
        if not training and not self.active_in_eval:
            return z
        if self.moments.skipped.device != z.device:
            self.to(z.device)
        self._check_shape(z)
        z2, m2, perm, identity = self._as_samples(z, mask)
        x = z2.detach()

        num = z2.shape[1]
        if self.moments.variable_size and self.moments.initialized:
            self.moments.grow(num)  # a longer sequence than any so far: new positions unseen
        # Scoring with statistics from before this batch (score_with="previous", or frozen
        # in eval) must skip neurons that have none yet (count 0: phi would be meaningless).
        scored_mask = m2
        stale = not training or self.score_with == "previous"
        if stale and self.moments.initialized and (self.moments.variable_size or m2 is not None):
            seen = self.moments.count[:num] > 0
            scored_mask = seen.expand_as(z2) if m2 is None else m2 & seen

        phi = None
        if training:
            if self.score_with == "previous" and self.moments.initialized:
                phi = monosemantic_scale(x, self.moments, self.eps)
            inhibit = self.inhibiting
            self.moments.update(x, m2)
            self.step += 1
        else:
            inhibit = self.moments.initialized and self.inhibiting
        if not self.moments.initialized:
            return z
        mu, denom = scale_parameters(self.moments, num, self.eps)  # once per step
        if phi is None and (self.score_with == "updated" or not training):
            phi = phi_from(x, mu, denom)
        if phi is None:  # first batch scored on previous statistics: nothing to score with
            return z

        selected = self.selector(phi, scored_mask, update=training)
        out2 = self.strategy(z2, selected, TapStatistics(mu, denom)) if inhibit else z2
        if self.record_metrics:
            self._record(phi, selected if inhibit else None, scored_mask)
        return z if out2 is z2 else self._restore(out2, z, perm, identity)

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def _record(self, phi: Tensor, selected: Optional[Tensor], mask: Optional[Tensor]) -> None:
        n, f = phi.shape
        if mask is None:
            valid = phi.new_full((), float(n * f))  # a fill, not a host-to-device copy
            per_neuron_valid = phi.new_full((f,), float(n))
            phi_sum = phi.sum()
            col_max = phi.amax(dim=0)
        else:
            per_neuron_valid = mask.sum(0).float()
            valid = per_neuron_valid.sum()
            phi_sum = phi.masked_fill(~mask, 0.0).sum()  # not phi * mask: NaN * 0 is NaN
            col_max = phi.masked_fill(~mask, float("-inf")).amax(dim=0)
        has_values = per_neuron_valid > 0
        neurons = has_values.sum().float()
        mono = ((col_max > self.tau_report) & has_values).sum().float()
        per_neuron_kills = None
        if selected is None:
            kills = false_kills = phi.new_zeros(())
        else:
            per_neuron_kills = selected.sum(0).float()
            broad = per_neuron_kills > self.max_share * per_neuron_valid
            kills = per_neuron_kills.sum()
            false_kills = (per_neuron_kills * broad).sum()
        metrics = {
            "selected_frac": kills / valid.clamp(min=1.0),
            "mono_ratio": mono / neurons.clamp(min=1.0),
            "phi_mean": phi_sum / valid.clamp(min=1.0),
            "phi_max": col_max.max() if f > 0 else phi.new_zeros(()),
            "fkr": false_kills / kills.clamp(min=1.0),
            "kills": kills,
            "false_kills": false_kills,
            "mono_neurons": mono,
            "neurons": neurons,
            "values": valid,
        }
        reg_loss = getattr(self.strategy, "last_loss", None)
        if reg_loss is not None and selected is not None:
            metrics["reg_loss"] = reg_loss
        self.last_metrics = metrics
        self.last_kills_per_neuron = per_neuron_kills
        if self.record_histogram:
            values = phi.flatten() if mask is None else phi[mask]
            stride = max(1, values.numel() // HISTOGRAM_SAMPLES)
            self.last_phi_sample = values[::stride].detach()

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, late_start={self.late_start}, eps={self.eps}, score_with={self.score_with!r}, "
            f"reduce_dims={self.reduce_dims}, active_in_eval={self.active_in_eval}"
        )
