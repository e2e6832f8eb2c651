"""Inhibition strategies: what happens to a selected activation (docs/method.md §5).

Every strategy maps ``z`` (``(N, F)``), the bool ``selected`` of the same shape and the
tap's statistics to the value passed on. Unselected values pass through untouched,
no strategy has trainable parameters.

| strategy           | forward value              | gradient dz'/dz |
| ------------------ | -------------------------- | --------------- |
| reverse (delta)    | -delta*z + sg(mu + delta*z) = mu | -delta    |
| mean_nograd        | sg(mu)                     | 0               |
| mean_passthrough   | z + sg(mu - z) = mu        | +1              |
| regularize         | z                          | 1 + loss term   |
| none               | z                          | 1               |

The first three share one autograd function (:class:`ReplaceWithMean`) that writes
``mu`` exactly and scales the gradient of selected values by a constant, saving only
the bool selection for backward; writing ``-delta*z + sg(mu + delta*z)`` literally
would round ``mu`` in low precision and keep two activation-sized tensors alive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn


@dataclass
class TapStatistics:
    """What a strategy may read: per-neuron ``mean`` and phi's denominator
    ``denom = v + eps * mean_k(v_k)``, both float32 ``(F,)``, and ``loss_scale``, the
    factor the training loop applies to the loss before backward (1 / gradient
    accumulation x the AMP loss scale; a float or a device tensor), which a strategy
    adding a loss term must apply to its gradient too."""

    mean: Tensor
    denom: Tensor
    loss_scale: Union[float, Tensor] = 1.0


class ReplaceWithMean(torch.autograd.Function):
    """Forward: ``where(selected, mu, z)``. Backward: ``grad * where(selected, g, 1)``
    (docs/method.md §5.1: g = -delta, 0 or +1)."""

    @staticmethod
    def forward(ctx, z: Tensor, selected: Tensor, mean: Tensor, grad_scale: float) -> Tensor:
        ctx.save_for_backward(selected)
        ctx.grad_scale = grad_scale
        return torch.where(selected, mean.to(z.dtype), z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (selected,) = ctx.saved_tensors
        g = ctx.grad_scale
        if g == 1.0:
            grad_z = grad
        elif g == 0.0:
            grad_z = grad.masked_fill(selected, 0.0)
        else:
            grad_z = torch.where(selected, grad * g, grad)
        return grad_z, None, None, None


class Strategy(nn.Module):
    """Base class: ``forward(z, selected, stats) -> z'`` of z's shape and dtype."""

    def forward(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        raise NotImplementedError


class ReverseDeactivation(Strategy):
    """Reverse Deactivation (MEmeL eq. 12, docs/method.md §5): ``z' = -delta*z + sg(mu + delta*z)``.

    The forward value is the running mean ``mu``; the gradient is ``-delta``, so the
    update pushes the neuron *away* from the response it gave. ``delta = 0`` is
    :class:`MeanNoGrad`, ``delta = -1`` is :class:`MeanPassthrough`.
    """

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = float(delta)

    def forward(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        return ReplaceWithMean.apply(z, selected, stats.mean, -self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"


class MeanNoGrad(Strategy):
    """Naive (a): ``z' = sg(mu)``; no gradient reaches the selected value."""

    def forward(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        return ReplaceWithMean.apply(z, selected, stats.mean, 0.0)


class MeanPassthrough(Strategy):
    """Naive (b): ``z' = z + sg(mu - z)``; value ``mu``, gradient +1 (straight-through)."""

    def forward(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        return ReplaceWithMean.apply(z, selected, stats.mean, 1.0)


class NoInhibition(Strategy):
    """``none``: the identity; statistics and metrics only."""

    def forward(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        return z


class _IdentityWithRegulariser(torch.autograd.Function):
    """Identity forward; backward adds the gradient of the L2E regulariser.

    ``coef`` is ``2 * lambda / (N * denom)`` per neuron, so the added gradient is
    ``coef * (z - mu)`` on selected values and 0 elsewhere. Saves ``z`` (shared with the
    next layer's saved input in a Transformer MLP, so no extra memory) and the bool
    selection; computes in float32 (float64 for a float64 ``z``).
    """

    @staticmethod
    def forward(ctx, z: Tensor, selected: Tensor, mean: Tensor, coef: Tensor) -> Tensor:
        ctx.save_for_backward(z, selected, mean, coef)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, selected, mean, coef = ctx.saved_tensors
        work = torch.promote_types(z.dtype, torch.float32)
        # docs/method.md §5.2: d/dz [lambda/N * (z - mu)^2 / denom] = 2 * lambda / (N * denom) * (z - mu) on selected values
        extra = z.to(work) - mean.to(work)  # a new tensor: z itself is never written
        extra.mul_(coef.to(work)).masked_fill_(selected.logical_not(), 0.0)
        return grad + extra.to(grad.dtype), None, None, None


class Regularize(Strategy):
    r"""L2E-style inhibition by a loss term, without touching ``training_step`` (docs/method.md §5.2).

    Forward values are unchanged. Backward adds the gradient of

        R = lambda * sum_selected (z - sg(mu))^2 / (v + eps * mean_k(v_k)) / N

    with ``N`` the number of samples (rows after pooling ``reduce_dims``) of the tap's
    input, so R is a per-sample average and does not grow with the batch; ``mu`` and the
    denominator are the tap's running statistics, constants for autograd. The gradient
    reaches the parameters through the normal backward of the task loss, as if ``R``
    had been added to it (an autograd function that is the identity forward). Since the
    trainer scales the task loss before backward (``1 / accumulate_grad_batches``, and
    the AMP loss scale under fp16), R's gradient is multiplied by ``stats.loss_scale``,
    the same factor (``MEmeL.begin_step(loss_scale=...)``; the callback passes the
    trainer's; 1 when used alone). :meth:`penalty` gives ``N * R`` for the metrics
    (docs/method.md §5.2 and §6.5, computed on recording steps only).
    The output is a view of ``z`` (no copy): a module after the tap must not modify it
    in place (autograd raises if it does).

    Example:
        >>> reg = Regularize(reg_lambda=0.5)
        >>> z = torch.tensor([[1.0, 3.0]], requires_grad=True)
        >>> stats = TapStatistics(mean=torch.zeros(2), denom=torch.ones(2))
        >>> out = reg(z, torch.tensor([[False, True]]), stats)
        >>> out.sum().backward()
        >>> z.grad   # 1 from the sum, plus 2 * 0.5 * (3 - 0) / 1 on the selected value
        tensor([[1., 4.]])
    """

    def __init__(self, reg_lambda: float = 1e-3) -> None:
        super().__init__()
        self.reg_lambda = float(reg_lambda)

    @torch.no_grad()
    def penalty(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        """``lambda * sum_selected (z - mu)^2 / denom`` (R times the rows N), float64."""
        sq = (z.float() - stats.mean).square_().div_(stats.denom)
        return torch.where(selected, sq, 0.0).sum(dtype=torch.float64) * self.reg_lambda

    def forward(self, z: Tensor, selected: Tensor, stats: TapStatistics) -> Tensor:
        scale = self.reg_lambda / max(z.shape[0], 1)
        if not z.requires_grad or not torch.is_grad_enabled():
            return z
        work = torch.promote_types(z.dtype, torch.float32)
        coef = (2.0 * scale) / stats.denom.to(work).clamp(min=torch.finfo(torch.float32).tiny)
        coef = coef * stats.loss_scale  # scaled like the task loss (accumulation, AMP)
        return _IdentityWithRegulariser.apply(z, selected, stats.mean, coef)

    def extra_repr(self) -> str:
        return f"reg_lambda={self.reg_lambda}"


STRATEGIES: dict[str, type[Strategy]] = {
    "reverse": ReverseDeactivation,
    "mean_nograd": MeanNoGrad,
    "mean_passthrough": MeanPassthrough,
    "regularize": Regularize,
    "none": NoInhibition,
}


def build_strategy(name: str, *, delta: float = 1.0, reg_lambda: float = 1e-3) -> Strategy:
    """Build a strategy by its name (see :data:`STRATEGIES`, docs/method.md §5)."""
    if name == "reverse":
        return ReverseDeactivation(delta)
    if name == "regularize":
        return Regularize(reg_lambda)
    if name in STRATEGIES:
        return STRATEGIES[name]()
    raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
