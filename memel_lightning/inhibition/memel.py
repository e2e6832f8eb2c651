"""MEmeL: one tap's statistics, selection and inhibition (docs/method.md §1-§6)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .config import MEmeLConfig, MEmeLConfigError
from .feature_fkr import FeatureFKR, LabelledFKRMetrics, labels_to_rows
from .layout import TapLayout
from .metrics import INHIBITION, MetricGroup, StepAccumulator, TapCall, reduce_across_ranks
from .metrics import compute as compute_metrics
from .moments import RunningMoments
from .scale import monosemantic_scale, phi_from, scale_parameters
from .selectors import Selector, TopK, build_selector
from .strategies import Regularize, Strategy, TapStatistics, build_strategy

HISTOGRAM_SAMPLES = 1 << 16
PHI_SAMPLE = "phi_sample"  # end_step key of the histogram sample (when asked for)


class MEmeL(nn.Module):
    r"""Watch one tap's activations and inhibit its monosemantic ones.

    ``forward(z, mask=None, labels=None)`` takes the tap's output ``z`` of shape
    ``(B, *S)`` (every index of ``S`` is a neuron, :class:`TapLayout`) and returns a
    tensor of the same shape and dtype. In training it

    1. merges the batch into the running moments (docs/method.md §2, Lemma 3.2);
    2. scores every value with the Monosemantic Scale (§3)
       ``phi = (z - mu)^2 / (v + eps * mean_k(v_k))``, using the statistics after the
       merge (``score_with="updated"``) or before it (``"previous"``);
    3. after ``late_start`` training batches, selects values (§4) and applies the
       inhibition ``strategy`` (§5).

    In eval mode it is the identity unless ``active_in_eval`` (then it selects and
    inhibits with frozen statistics). Statistics are float32 and only move in training.
    Settings: :class:`MEmeLConfig` (``config``, overridden by keyword ``options``).
    ``mask`` (bool or 0/1, shape a prefix of ``z.shape`` such as ``(B, L)``) marks valid
    positions: masked values never enter the statistics and are never selected.
    ``labels`` (integer feature labels over a prefix of ``z``'s axes like ``mask``, e.g.
    ``(B,)`` or ``(B, L)``; negative = unlabelled) give the labelled False Killing Rate
    of L2E (Eq. 3-4; docs/method.md §6.4, :mod:`~.feature_fkr`): in training every call
    with labels merges its phi into per-label statistics of each neuron (decayed like
    the moments) that name the neuron's feature ``l*``, and the step's metrics gain
    ``fkr`` (the share of the step's labelled kills whose label is not their neuron's
    ``l*``, judged before merging the step) with its counts ``false_kills`` and
    ``labelled_kills``; without labels there is no ``fkr``.

    **Step lifecycle.** A training step (one batch) is ``begin_step()``, any number of
    calls (a recurrent tap is called once per time step), ``end_step()``. ``late_start``
    counts steps (training batches: ``end_step`` advances the counter), ``forget_steps``
    counts statistics updates (calls). When ``begin_step(record=True)`` the calls add to
    the step's metric states (docs/method.md §6, :mod:`~.metrics`) and ``end_step``
    returns the step's metrics over all calls (reduced across ranks with one collective
    when ``sync_dist``), including ``kills_per_neuron``, the step's kills of every
    neuron. A training call outside ``begin_step``/``end_step`` is a step by itself
    (no metrics). ``loss_scale`` is the factor the training loop applies to the loss
    before backward (``1 / accumulation`` x the AMP scale): the ``regularize``
    strategy scales its gradient by it.

    Example (a plain PyTorch loop):
        >>> _ = torch.manual_seed(0)
        >>> memel = MEmeL(k=1, late_start=1)
        >>> for step in range(2):
        ...     memel.begin_step(record=True)
        ...     z = torch.randn(8, 4, requires_grad=True)
        ...     out = memel(z)                       # the tap: inhibited from step 2 on
        ...     out.sum().backward()
        ...     metrics = memel.end_step()
        ...     print(step, int((out != z).sum()), float(metrics["selected_frac"]))
        0 0 0.0
        1 8 0.25
    """

    def __init__(
        self,
        config: Optional[MEmeLConfig] = None,
        *,
        name: str = "",
        sync_dist: bool = False,
        selector_module: Optional[Selector] = None,
        strategy_module: Optional[Strategy] = None,
        **options: Any,
    ) -> None:
        super().__init__()
        config = config if config is not None else MEmeLConfig()
        if not isinstance(config, MEmeLConfig):
            raise MEmeLConfigError(f"MEmeL's config must be a MEmeLConfig, got {type(config).__name__}")
        self.config = config.replace(**options) if options else config
        cfg = self.config
        self.name = name
        self.layout = TapLayout(tuple(cfg.reduce_dims), name)
        # the varying axis pooled into the samples: nothing varies
        variable = cfg.variable_shape and 0 not in self.layout.reduce_dims
        self.moments = RunningMoments(
            cfg.forget_steps, sync_dist=sync_dist, variable_size=variable, nonfinite=cfg.nonfinite, name=name
        )
        self.selector = selector_module if selector_module is not None else build_selector(
            cfg.selector, k=cfg.k, tau=cfg.tau, target_ratio=cfg.target_ratio, lr=cfg.threshold_lr
        )
        self.strategy = strategy_module if strategy_module is not None else build_strategy(
            cfg.strategy, delta=cfg.delta, reg_lambda=cfg.reg_lambda
        )
        self.variable_shape = variable
        # labelled False Killing Rate (L2E Eq. 3-4, docs/method.md §6.4): per-label phi mass and
        # count of every neuron, decayed like the moments; used only when labels are given
        self.feature_fkr = FeatureFKR(cfg.forget_steps, sync_dist=sync_dist, name=name)
        self.sync_dist = sync_dist
        self.metric_groups: list[MetricGroup] = [INHIBITION, LabelledFKRMetrics(self.feature_fkr)]
        # Plain Python state (saved through get_extra_state) so that no step needs a
        # device sync: training batches seen, and the per-sample shape of the output.
        self.step = 0
        self.neuron_shape: Optional[tuple[int, ...]] = None
        self._in_step = False
        self._trained = False          # a training call happened in the open step
        self._inhibit_step = False     # the late start has passed for the open step
        self._loss_scale: Any = 1.0
        self._recording = False
        self._acc: Optional[StepAccumulator] = None
        self._histogram: Optional[list[Tensor]] = None

    # ------------------------------------------------------------------ settings
    @property
    def late_start(self) -> int:
        return self.config.late_start

    @property
    def eps(self) -> float:
        return self.config.eps

    @property
    def reduce_dims(self) -> tuple[int, ...]:
        return self.layout.reduce_dims

    @property
    def sync_dist(self) -> bool:
        return self.moments.sync_dist

    @sync_dist.setter
    def sync_dist(self, value: bool) -> None:
        self.moments.sync_dist = bool(value)
        self.selector.sync_dist = bool(value)
        self.feature_fkr.sync_dist = bool(value)

    @property
    def inhibiting(self) -> bool:
        """Whether the next training batch is past the late start."""
        return self.step >= self.config.late_start

    def get_extra_state(self) -> dict:
        return {"step": self.step, "neuron_shape": self.neuron_shape}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])
        shape = state.get("neuron_shape")
        self.neuron_shape = None if shape is None else tuple(int(s) for s in shape)

    # ------------------------------------------------------------------ lifecycle
    def begin_step(self, record: bool = True, histogram: bool = False, loss_scale: Any = 1.0) -> None:
        """Open a training step: ``record`` its metrics, keep a phi ``histogram`` sample,
        scale the regulariser's gradient by ``loss_scale`` (a float or device tensor)."""
        if self._in_step:
            raise RuntimeError(f"tap {self.name!r}: begin_step called twice without end_step")
        self._in_step = True
        self._trained = False
        self._inhibit_step = self.inhibiting
        self._loss_scale = loss_scale
        self._recording = bool(record or histogram)
        self._acc = None  # created at the first call, on the activations' device
        self._histogram = [] if histogram else None

    def close_step(self) -> Optional[StepAccumulator]:
        """End the step without computing metrics: the local states (None when not
        recording), sized for the cross-rank merge. :class:`TapSet` merges many taps'
        states with one collective and calls :meth:`metrics_from`."""
        if not self._in_step:
            raise RuntimeError(f"tap {self.name!r}: end_step called without begin_step")
        self._in_step = False
        if self._trained:
            self.step += 1
        self._loss_scale = 1.0
        acc, self._acc = self._acc, None
        if self._recording and acc is None:  # no training call this step: empty states
            acc = StepAccumulator(self.metric_groups, self.moments.skipped.device)
        self._recording = False
        if acc is not None:
            acc.resize(self.moments.num_neurons)  # the same on every rank when synced
        return acc

    def metrics_from(self, states: dict[str, Tensor]) -> dict[str, Tensor]:
        """The step's metrics from merged states (plus the histogram sample, if asked)."""
        out = compute_metrics(self.metric_groups, states, self.config.tau_report, self.config.max_share)
        if self._histogram:
            out[PHI_SAMPLE] = torch.cat(self._histogram)
        self._histogram = None
        return out

    def end_step(self) -> dict[str, Tensor]:
        """Close the step; its metrics over all calls (empty when not recording).

        Keys: the per-tap names of :data:`~.metrics.METRICS` present for this tap, the
        counts behind them and ``kills_per_neuron``; reduced across ranks (one
        collective) when ``sync_dist``."""
        acc = self.close_step()
        if acc is None:
            self._histogram = None
            return {}
        states = reduce_across_ranks([acc])[0] if self.sync_dist else acc.snapshot()
        return self.metrics_from(states)

    # ------------------------------------------------------------------ shapes
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

    def _check_k(self, num: int) -> None:
        if isinstance(self.selector, TopK) and self.selector.k > num and not self.variable_shape:
            raise MEmeLConfigError(
                f"memel.k={self.selector.k} is larger than the {num} neurons per sample of tap {self.name!r}; "
                f"choose k <= {num}"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, z: Tensor, mask: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        if not z.is_floating_point():
            raise TypeError(f"tap {self.name!r}: MEmeL needs a floating-point output, got {z.dtype}")
        training = self.training
        if not training and not self.config.active_in_eval:
            return z
        if training and not self._in_step:  # plain use: the call is a step of its own
            self.begin_step(record=False)
            try:
                return self._forward(z, mask, labels, training)
            finally:
                self.close_step()
        return self._forward(z, mask, labels, training)

    def _forward(self, z: Tensor, mask: Optional[Tensor], labels: Optional[Tensor], training: bool) -> Tensor:
        if self.moments.skipped.device != z.device:
            self.to(z.device)
        self._check_shape(z)
        z2 = self.layout.to_samples(z)
        m2 = self.layout.mask_to_samples(mask, z)
        x = z2.detach()
        num = z2.shape[1]
        self._check_k(num)
        if self.moments.variable_size and self.moments.initialized:
            self.moments.grow(num)  # a longer sequence than any so far: new positions unseen
        # Scoring with statistics from before this batch (score_with="previous", or frozen
        # in eval) must skip neurons that have none yet (count 0: phi would be meaningless).
        scored_mask = m2
        stale = not training or self.config.score_with == "previous"
        if stale and self.moments.initialized and (self.moments.variable_size or m2 is not None):
            seen = self.moments.count[:num] > 0
            scored_mask = seen.expand_as(z2) if m2 is None else m2 & seen

        phi = None
        if training:
            if self.config.score_with == "previous" and self.moments.initialized:
                phi = monosemantic_scale(x, self.moments, self.config.eps)
            inhibit = self._inhibit_step  # docs/method.md §4.0: late_start counts steps (batches)
            self.moments.update(x, m2)  # docs/method.md §2: one statistics update per call
            self._trained = True
        else:
            inhibit = self.moments.initialized and self.inhibiting
        if not self.moments.initialized:
            return z
        mu, denom = scale_parameters(self.moments, num, self.config.eps)  # once per call
        if phi is None and (self.config.score_with == "updated" or not training):
            phi = phi_from(x, mu, denom)  # docs/method.md §3
        if phi is None:  # first batch scored on previous statistics: nothing to score with
            return z

        selected = self.selector(phi, scored_mask, update=training)
        stats = TapStatistics(mu, denom, loss_scale=self._loss_scale if training else 1.0)
        out2 = self.strategy(z2, selected, stats) if inhibit else z2  # docs/method.md §4-§5
        rows = None
        if training and labels is not None:  # per sample row (N,), or per value (N, F)
            rows = labels_to_rows(labels, z, self.layout.reduce_dims, self.name)
        if training and self._in_step:
            self._record(z2, phi, selected if inhibit else None, scored_mask, rows, stats)
        if rows is not None:
            # after the step's kills were judged (out of sample): merge into l*'s statistics
            self.feature_fkr.update(phi, rows, scored_mask)
        return z if out2 is z2 else self.layout.restore(out2, z)

    # ------------------------------------------------------------------ metrics
    @torch.no_grad()
    def _record(
        self, z2: Tensor, phi: Tensor, selected: Optional[Tensor], mask: Optional[Tensor],
        labels: Optional[Tensor], stats: TapStatistics,
    ) -> None:
        if self._recording:
            if self._acc is None:
                self._acc = StepAccumulator(self.metric_groups, phi.device)
            penalty = None
            if selected is not None and isinstance(self.strategy, Regularize):
                penalty = self.strategy.penalty(z2, selected, stats)
            call = TapCall(phi, selected, mask, labels, penalty)
            for group in self.metric_groups:
                group.update(self._acc, call)
        if self._histogram is not None:
            values = phi.flatten() if mask is None else phi[mask]
            stride = max(1, values.numel() // HISTOGRAM_SAMPLES)
            self._histogram.append(values[::stride].detach())

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"name={self.name!r}, late_start={c.late_start}, eps={c.eps}, score_with={c.score_with!r}, "
            f"reduce_dims={self.reduce_dims}, active_in_eval={c.active_in_eval}"
        )
