"""Per-neuron running mean and variance: Lemma 3.2 of MEmeL (docs/method.md §2)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


class NonFiniteStatisticsError(FloatingPointError):
    """A batch with NaN or inf values reached a tap whose policy is ``nonfinite="raise"``."""


def batch_moments(x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-neuron sample count, mean and *sum of squared deviations* of ``x`` (docs/method.md §2.1).

    ``x`` is ``(N, F)``: N samples of F neurons. ``mask`` (bool, ``(N, F)``) marks the
    values that count. Returned in float32, each of shape ``(F,)``; a neuron with no
    valid sample has count 0, mean 0 and M2 0. Two passes (mean, then deviations) so
    that float32 keeps its precision when the mean is large compared to the spread.
    """
    x = x.float()
    if mask is None:
        n = torch.full((x.shape[1],), float(x.shape[0]), device=x.device)
        mean = x.mean(0)
        m2 = (x - mean).square_().sum(0)
        return n, mean, m2
    # masked_fill, not a product with the mask: a NaN/inf in a masked position (padding)
    # must not leak into the statistics, and NaN * 0 is NaN.
    invalid = ~mask
    n = mask.sum(0, dtype=torch.float32)
    mean = x.masked_fill(invalid, 0.0).sum(0) / n.clamp(min=1.0)
    m2 = (x - mean).masked_fill_(invalid, 0.0).square_().sum(0)
    return n, mean, m2


def all_reduce_moments(n: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Combine per-rank batch moments into those of the global batch (docs/method.md §2.3).

    Sums ``count``, ``sum`` and ``sum of squares`` over the default process group in one
    float64 all-reduce; float64 keeps ``sum_sq - n * mean^2`` free of cancellation.
    """
    n64, mean64 = n.double(), mean.double()
    packed = torch.stack([n64, n64 * mean64, m2.double() + n64 * mean64.square()])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    n_all, s_all, q_all = packed.unbind(0)
    mean_all = s_all / n_all.clamp(min=1.0)
    m2_all = (q_all - n_all * mean_all.square()).clamp(min=0.0)
    return n_all.float(), mean_all.float(), m2_all.float()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class RunningMoments(nn.Module):
    r"""Running per-neuron mean and unbiased variance with forgetting (MEmeL, Lemma 3.2).

    Each neuron keeps a mean ``mu``, a variance ``v``, the number ``m`` of samples merged
    (``count``) and the number ``c`` of batches merged (``steps``). A batch with ``b``
    valid samples, mean ``mb`` and biased variance ``vb`` is merged exactly::

        first batch:  mu = mb;  v = vb * b / (b - 1)
        otherwise:    mu' = (m*mu + b*mb) / (m + b)
                      v'  = m*b*(mu - mb)^2 / ((m+b-1)(m+b)) + (b*vb + (m-1)*v) / (m+b-1)
        c >= n_f:     the same with m := b * n_f  (forgetting: an EMA over ~n_f batches)

    Statistics are float32 whatever the input dtype and never enter autograd. Buffers
    are sized lazily from the first batch; later batches must have the same number of
    neurons, unless ``variable_size`` is set: then a batch of F neurons is merged into
    the first F statistics (growing them if F is larger). MEmeL uses this for
    dynamically padded sequences, whose positions are the leading neuron axis.

    Counts and step counters are per neuron, so masked values (padding) are simply not
    merged: a neuron absent from a batch keeps its statistics and its counters.

    Non-finite batches: with ``nonfinite="skip"`` (default) a batch whose valid values
    contain NaN or inf leaves the statistics untouched and increments ``skipped``; with
    ``"raise"`` it raises :class:`NonFiniteStatisticsError` naming the tap. (The callback
    warns when ``skipped`` grows; checking here would cost a host sync every step.)

    Example:
        >>> m = RunningMoments(forget_steps=10)
        >>> _ = m.update(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
        >>> m.mean, m.var
        (tensor([ 2., 20.]), tensor([  2., 200.]))
    """

    def __init__(
        self,
        forget_steps: int = 10,
        *,
        sync_dist: bool = False,
        variable_size: bool = False,
        nonfinite: str = "skip",
        name: str = "",
    ) -> None:
        super().__init__()
        if forget_steps < 1:
            raise ValueError(f"forget_steps must be >= 1, got {forget_steps}")
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
        self.forget_steps = int(forget_steps)
        self.sync_dist = sync_dist
        self.variable_size = variable_size
        self.nonfinite = nonfinite
        self.name = name
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("var", torch.zeros(0))
        self.register_buffer("count", torch.zeros(0, dtype=torch.long))
        self.register_buffer("steps", torch.zeros(0, dtype=torch.long))
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long))

    @property
    def initialized(self) -> bool:
        return self.mean.numel() > 0

    @property
    def num_neurons(self) -> int:
        return self.mean.numel()

    def _allocate(self, num: int, device: torch.device) -> None:
        self.mean = torch.zeros(num, device=device)
        self.var = torch.zeros(num, device=device)
        self.count = torch.zeros(num, dtype=torch.long, device=device)
        self.steps = torch.zeros(num, dtype=torch.long, device=device)

    def _check_size(self, num: int) -> None:
        if self.variable_size:
            self.grow(num)
        elif self.initialized and num != self.num_neurons:
            raise ValueError(
                f"tap {self.name!r}: got {num} neurons per sample, but the running statistics "
                f"were sized for {self.num_neurons} by the first batch; a tap's output shape "
                "must not change between batches (pad to a fixed length, or pass "
                "variable_shape=True to MEmeL for dynamically padded sequences)"
            )

    @torch.no_grad()
    def update(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Merge one batch ``x`` of shape ``(N, F)`` (``mask``: bool ``(N, F)``).

        Returns a bool tensor: False when the batch was skipped for non-finite values.
        """
        if x.dim() != 2:
            raise ValueError(f"tap {self.name!r}: RunningMoments.update expects (N, F), got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape:
            raise ValueError(f"tap {self.name!r}: mask shape {tuple(mask.shape)} != values shape {tuple(x.shape)}")
        if not self.initialized:
            self._allocate(x.shape[1], x.device)
        self._check_size(x.shape[1])
        n, mb, m2 = batch_moments(x, mask)
        if self.sync_dist and _distributed():
            if self.variable_size:
                n, mb, m2 = self._pad_to_global_size(n, mb, m2)
            n, mb, m2 = all_reduce_moments(n, mb, m2)
        # After the all-reduce every rank sees the same values, so every rank takes the
        # same skip decision and the statistics stay identical across ranks. The
        # decision stays on the device (no host sync); only "raise" must look at it.
        finite = torch.isfinite(mb).all() & torch.isfinite(m2).all()
        if self.nonfinite == "raise" and not bool(finite):
            raise NonFiniteStatisticsError(
                f"tap {self.name!r}: the batch contains NaN or inf activations; the running "
                "statistics were not updated"
            )
        self.skipped.add_(~finite)  # docs/method.md §2.5
        self._merge(n, mb, m2, finite)
        return finite

    def _pad_to_global_size(self, n: Tensor, mb: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Dynamic padding differs per rank: zero-pad every rank's batch moments to the
        largest size of any rank (count 0 is neutral in the merge) before the all-reduce."""
        size = torch.tensor([n.numel()], device=n.device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)  # one host sync, variable-size taps only
        extra = int(size) - n.numel()
        self.grow(int(size))
        if extra == 0:
            return n, mb, m2
        pad = n.new_zeros(extra)
        return torch.cat([n, pad]), torch.cat([mb, pad]), torch.cat([m2, pad])

    def view(self, num: int) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` of the first ``num`` neurons (all of them unless variable_size)."""
        return self.mean[:num], self.var[:num]

    def _merge(self, b: Tensor, mb: Tensor, m2: Tensor, finite: Tensor) -> None:
        num = b.numel()
        mu, v = self.mean[:num], self.var[:num]
        count, steps = self.count[:num], self.steps[:num]

        seen = (b > 0) & finite            # neurons with at least one valid value
        # Forgetting (docs/method.md §2.4): after n_f merged updates the old statistics weigh as n_f batches.
        m = torch.where(steps >= self.forget_steps, b * self.forget_steps, count.float())
        # Lemma 3.2 (docs/method.md §2.2), with w = b / (m + b), d = mb - mu and b * vb = m2:
        #   mu' = (m*mu + b*mb) / (m+b)                                  = mu + w*d
        #   v'  = m*b*d^2 / ((m+b-1)(m+b)) + (b*vb + (m-1)*v) / (m+b-1) = (m*w*d^2 + m2 + (m-1)*v) / (m+b-1)
        # The first batch (m = 0) needs no special case: an unseen neuron has mu = v = 0,
        # so mu' = mb and v' = m2 / (b-1) (0 for a single value: m2 = 0, denominator clamped).
        # Written with few operations: each is a kernel launch on GPU.
        s = m + b
        w = b / s.clamp(min=1.0)
        d = mb - mu
        mu_new = torch.addcmul(mu, w, d)
        v_new = torch.addcmul(m2, m * w, d.square()).addcmul_(m - 1.0, v).div_((s - 1.0).clamp_(min=1.0))
        mu.copy_(torch.where(seen, mu_new, mu))
        v.copy_(torch.where(seen, v_new, v))
        count.add_(torch.where(seen, b, 0.0).long())
        steps.add_(seen)

    @torch.no_grad()
    def grow(self, num: int) -> None:
        """Extend the statistics to ``num`` neurons; new neurons start unseen."""
        if num <= self.num_neurons:
            return
        extra = num - self.num_neurons
        device = self.mean.device
        self.mean = torch.cat([self.mean, torch.zeros(extra, device=device)])
        self.var = torch.cat([self.var, torch.zeros(extra, device=device)])
        self.count = torch.cat([self.count, torch.zeros(extra, dtype=torch.long, device=device)])
        self.steps = torch.cat([self.steps, torch.zeros(extra, dtype=torch.long, device=device)])

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
        # Buffers are sized lazily, so adopt the saved sizes before the default copy.
        for key in ("mean", "var", "count", "steps"):
            saved = state_dict.get(prefix + key)
            if saved is not None:
                current = getattr(self, key)
                setattr(self, key, torch.empty_like(saved, device=current.device, dtype=current.dtype))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"forget_steps={self.forget_steps}, neurons={self.num_neurons}"

