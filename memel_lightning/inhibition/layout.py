"""TapLayout: a tap's output seen as a (samples x neurons) matrix, and back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class TapLayout:
    """How an output ``z`` of shape ``(B, *S)`` becomes ``(N, F)`` (docs/method.md §1).

    Every index of ``S`` is a neuron, except the axes in ``reduce_dims`` (indices into
    ``S``): those are pooled into the samples, e.g. ``reduce_dims=(0,)`` on a
    ``(B, L, H)`` output makes each of the ``B * L`` tokens a sample of ``H`` neurons.
    ``to_samples`` returns the ``(N, F)`` view (a copy only when axes must move) and
    ``restore`` puts an ``(N, F)`` result back into the output's shape.

    Example:
        >>> layout = TapLayout((0,))
        >>> z = torch.arange(12.0).reshape(1, 3, 4)      # B=1, L=3, H=4
        >>> layout.to_samples(z).shape
        torch.Size([3, 4])
        >>> torch.equal(layout.restore(layout.to_samples(z), z), z)
        True
    """

    reduce_dims: tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        dims = tuple(sorted(int(d) for d in self.reduce_dims))
        if len(set(dims)) != len(dims) or any(d < 0 for d in dims):
            raise ValueError(f"reduce_dims must be distinct non-negative axes of S, got {tuple(self.reduce_dims)}")
        object.__setattr__(self, "reduce_dims", dims)

    def permutation(self, z: Tensor) -> list[int]:
        """Axes of ``z`` in the order (batch, pooled axes, neuron axes)."""
        ndim_s = z.dim() - 1
        if ndim_s < 1:
            raise ValueError(f"tap {self.name!r}: expected an output of shape (B, *S), got {tuple(z.shape)}")
        if any(d >= ndim_s for d in self.reduce_dims):
            raise ValueError(
                f"tap {self.name!r}: reduce_dims={self.reduce_dims} but the output {tuple(z.shape)} has "
                f"only {ndim_s} neuron axes"
            )
        kept = [d for d in range(ndim_s) if d not in self.reduce_dims]
        return [0] + [1 + d for d in self.reduce_dims] + [1 + d for d in kept]

    def samples_per_item(self, z: Tensor) -> int:
        """Rows of ``to_samples(z)`` per batch item (the product of the pooled axes)."""
        n = 1
        for d in self.reduce_dims:
            n *= z.shape[1 + d]
        return n

    def neuron_shape(self, z: Tensor) -> tuple[int, ...]:
        """The shape of the kept (neuron) axes of ``z``."""
        return tuple(s for d, s in enumerate(z.shape[1:]) if d not in self.reduce_dims)

    def to_samples(self, z: Tensor) -> Tensor:
        """``(N, F)``: ``N = B * prod(pooled axes)`` samples of ``F = prod(kept axes)`` neurons."""
        perm = self.permutation(z)
        zp = z if perm == list(range(z.dim())) else z.permute(perm)
        return zp.reshape(z.shape[0] * self.samples_per_item(z), -1)

    def mask_to_samples(self, mask: Optional[Tensor], z: Tensor) -> Optional[Tensor]:
        """A mask over a prefix of ``z``'s axes (e.g. ``(B, L)``) as a bool ``(N, F)``."""
        if mask is None:
            return None
        if mask.dim() > z.dim() or tuple(mask.shape) != tuple(z.shape[: mask.dim()]):
            raise ValueError(
                f"tap {self.name!r}: mask of shape {tuple(mask.shape)} does not match the leading axes "
                f"of the output {tuple(z.shape)}"
            )
        m = mask.to(device=z.device, dtype=torch.bool)
        m = m.reshape(tuple(m.shape) + (1,) * (z.dim() - m.dim())).expand(z.shape)
        return self.to_samples(m)

    def restore(self, out2: Tensor, z: Tensor) -> Tensor:
        """Put ``out2`` (shaped like ``to_samples(z)``) back into the shape of ``z``."""
        perm = self.permutation(z)
        if perm == list(range(z.dim())):
            return out2.reshape(z.shape)
        permuted_shape = [z.shape[p] for p in perm]
        inverse = [perm.index(i) for i in range(len(perm))]
        return out2.reshape(permuted_shape).permute(inverse).contiguous()


def neuron_layout(reduce_dims: Sequence[int] = (), name: str = "") -> TapLayout:
    """The :class:`TapLayout` of a tap trained with ``reduce_dims``."""
    return TapLayout(tuple(reduce_dims), name)
