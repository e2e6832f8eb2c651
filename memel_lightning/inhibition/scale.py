"""The Monosemantic Scale (MEmeL, Definition 3.1; docs/method.md §3)."""
from __future__ import annotations

import torch
from torch import Tensor

from .moments import RunningMoments


def variance_floor(var: Tensor, count: Tensor, eps: float) -> Tensor:
    """``eps * mean_k(v_k)`` over the neurons seen so far (the variance compensation, docs/method.md §3)."""
    seen = (count > 0).float()
    return eps * (var * seen).sum() / seen.sum().clamp(min=1.0)  # no host sync


def monosemantic_scale(
    x: Tensor,
    moments: RunningMoments,
    eps: float = 0.01,
) -> Tensor:
    r"""``phi_i(z) = (z - mu_i)^2 / (v_i + eps * mean_k(v_k))`` for every value of ``x`` (docs/method.md §3).

    ``x`` is ``(N, F)`` or ``(N, *S)`` with ``prod(S)`` neurons (a prefix of the
    statistics when they are of variable size); the result is float32, shaped like
    ``x``. The mean in the compensation runs over all neurons of the tap that have
    statistics. Computed without autograd: phi scores, it is never differentiated.
    A zero denominator (every neuron constant so far) is floored at the smallest
    normal float32 so that phi stays finite where ``z == mu``.

    Example:
        >>> m = RunningMoments()
        >>> _ = m.update(torch.tensor([[0.0], [2.0]]))   # mu = 1, v = 2
        >>> monosemantic_scale(torch.tensor([[3.0]]), m, eps=0.0)
        tensor([[2.]])
    """
    shape = x.shape
    x2 = x.reshape(shape[0], -1)
    mu, denom = scale_parameters(moments, x2.shape[1], eps)
    return phi_from(x2, mu, denom).reshape(shape)


def scale_parameters(moments: RunningMoments, num: int, eps: float = 0.01) -> tuple[Tensor, Tensor]:
    """``(mu, v + eps * mean_k(v_k))`` of the first ``num`` neurons: phi's centre and scale.

    Computed once per step and shared by scoring and the inhibition strategy.
    """
    if not moments.initialized:
        raise RuntimeError(f"tap {moments.name!r}: monosemantic_scale needs statistics; feed a batch first")
    if num > moments.num_neurons or (num != moments.num_neurons and not moments.variable_size):
        raise ValueError(
            f"tap {moments.name!r}: input has {num} neurons per sample, statistics have {moments.num_neurons}"
        )
    mu, v = moments.view(num)
    denom = (v + variance_floor(moments.var, moments.count, eps)).clamp_(min=torch.finfo(torch.float32).tiny)
    return mu, denom


def phi_from(x: Tensor, mu: Tensor, denom: Tensor) -> Tensor:
    """``(x - mu)^2 / denom`` in float32 for ``x`` of shape ``(N, F)``, outside autograd."""
    with torch.no_grad():
        return (x.float() - mu).square_().div_(denom)
