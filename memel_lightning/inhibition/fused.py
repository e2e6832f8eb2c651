"""The fast path of one tap's step: statistics, scoring, selection and inhibition in few passes.

The reference path (:class:`~memel_lightning.inhibition.MEmeL` with ``impl="reference"``)
runs the formulas of docs/method.md §2-§5 op by op: every intermediate (the float32
copy, ``x - mu``, phi, the row maxima, the selection, ``mu`` cast to the output dtype)
is an activation-sized tensor written and read back. This module computes the same
values with

1. **one pass** for the batch moments (a Welford reduction over the samples);
2. **one pass** that scores, selects and writes the output and a bool mask
   (for ``topk`` with ``k=1`` the row maximum of phi and the selection are fused into
   one kernel that reads each row twice while it is still in cache);
3. **one pass** backward that reads the incoming gradient and the mask.

Only the bool selection (one byte per element) is saved for backward by the
``reverse`` / ``mean_nograd`` / ``mean_passthrough`` strategies; ``regularize`` also
keeps a reference to ``z`` (shared with whatever layer consumes the tap's output, so no
extra memory in a network; see docs/performance.md).

The kernels are plain PyTorch functions compiled with ``torch.compile`` (inductor
generates one C++/OpenMP or Triton kernel per pass) when the tensor is large enough
for compilation to pay off (:data:`COMPILE_MIN_NUMEL`; smaller calls take the
reference path, see :func:`pays`), or at every size with ``MEMEL_FUSED_COMPILE=always``;
``never`` runs the same functions eagerly at every size, as does a machine where
compilation fails (no C++ compiler; a warning, once). Values agree with the reference up to float rounding (tests/test_fastpath.py
compares both in float64 and low precision).

Example:
    >>> z = torch.tensor([[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]], requires_grad=True)
    >>> mu, denom = torch.zeros(3), torch.ones(3)
    >>> out, selected, hits = inhibit(z, mu, denom, TOP1, grad_scale=-1.0)
    >>> out
    tensor([[0., 1., 0.],
            [0., 0., 0.]], grad_fn=<_ReplaceSelectedBackward>)
    >>> out.sum().backward(); z.grad
    tensor([[ 1.,  1., -1.],
            [-1.,  1.,  1.]])
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

COMPILE_MIN_NUMEL = 1 << 18   # below this the dispatch of a compiled graph costs more than it saves
COMPILE_ENV = "MEMEL_FUSED_COMPILE"
BACKEND_ENV = "MEMEL_FUSED_BACKEND"   # "compile" (default) or "triton" (hand-written kernels, CUDA)
TINY = torch.finfo(torch.float32).tiny


# ---------------------------------------------------------------------------- selection specs
@dataclass(frozen=True)
class SelectSpec:
    """Which selection rule the fused kernel applies (docs/method.md §4).

    ``kind``: ``"top1"`` (per row, every valid value tied with the row's maximum phi),
    ``"row"`` (per row, phi >= a given per-row threshold: topk with k > 1),
    ``"gt"`` (phi > a scalar tau: fixed and moving threshold).
    """

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("top1", "row", "gt"):
            raise ValueError(f"unknown fused selection kind {self.kind!r}")


TOP1 = SelectSpec("top1")
ROW = SelectSpec("row")
GT = SelectSpec("gt")


# ---------------------------------------------------------------------------- kernels (pure)
# Written for inductor's CPU and Triton code generators: a float or 0/1 multiply where
# a ``where`` on a bool mask would make it emit slow mask conversions, and the mask
# stored as uint8 (viewed as bool for free). The same functions run eagerly when not
# compiled.
def _phi(x: Tensor, mu: Tensor, rdenom: Tensor) -> Tensor:
    # (x - mu)^2 * (1 / denom): one multiply per value instead of a division (the
    # division dominated the pass on CPU). phi differs from the reference's
    # (x - mu)^2 / denom by at most one float32 rounding.
    d = x.float() - mu
    return d * d * rdenom


def _as_u8(sel: Tensor) -> Tensor:
    if torch.compiler.is_compiling():
        return torch.where(sel, 1, 0).to(torch.uint8)  # inductor: fast vector store
    return sel.view(torch.uint8)


def _select(phi: Tensor, mask: Optional[Tensor], kind: str, thresh: Optional[Tensor]) -> Tensor:
    if kind == "gt":
        sel = phi > thresh
    else:
        scores = phi if mask is None else phi.masked_fill(~mask, float("-inf"))
        kth = scores.amax(dim=1, keepdim=True) if kind == "top1" else thresh
        sel = scores >= kth
    return sel if mask is None else sel & mask


def k_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and sum of squared deviations (float32); two reductions that
    inductor fuses into one kernel (the second reads x again from cache)."""
    xf = x.float()
    mean = xf.mean(0)
    d = xf - mean
    return mean, (d * d).sum(0)


def k_moments_masked(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masked per-column count, mean and sum of squared deviations (float32)."""
    xf = x.float()
    n = mask.sum(0, dtype=torch.float32)
    # where, not a product with the mask: a NaN/inf at a masked position must not leak.
    mean = torch.where(mask, xf, 0.0).sum(0) / n.clamp(min=1.0)
    d = torch.where(mask, xf - mean, 0.0)
    return n, mean, (d * d).sum(0)


def k_update_scale(x: Tensor, mask: Optional[Tensor], mean: Tensor, var: Tensor, count: Tensor, steps: Tensor,
                   skipped: Tensor, forget_steps: int, eps: float) -> Tensor:
    """Merge the batch into the running statistics in place and return phi's denominator.

    The whole per-call statistics work of docs/method.md §2.1-§2.5 and §3 in one compiled
    graph (a column reduction and two small per-neuron kernels instead of ~40 operators):
    batch moments, the non-finite skip, Lemma 3.2's merge with forgetting, and
    ``denom = v + eps * mean_seen(v)``. Same formulas, in the same order, as
    ``RunningMoments.update`` and ``scale_parameters`` (tested against them).
    """
    xf = x.float()
    if mask is None:
        b = torch.full_like(mean, float(x.shape[0]))
        mb = xf.mean(0)
        dev = xf - mb
    else:
        b = mask.sum(0, dtype=torch.float32)
        mb = torch.where(mask, xf, 0.0).sum(0) / b.clamp(min=1.0)
        dev = torch.where(mask, xf - mb, 0.0)
    m2 = (dev * dev).sum(0)
    finite = torch.isfinite(mb).all() & torch.isfinite(m2).all()
    seen = (b > 0) & finite
    m = torch.where(steps >= forget_steps, b * forget_steps, count.float())
    s = m + b
    w = b / s.clamp(min=1.0)
    d = mb - mean
    mu_new = mean + w * d
    v_new = (m2 + (m * w) * (d * d) + (m - 1.0) * var) / (s - 1.0).clamp(min=1.0)
    var_out = torch.where(seen, v_new, var)
    count_out = count + torch.where(seen, b, 0.0).long()
    mean.copy_(torch.where(seen, mu_new, mean))
    var.copy_(var_out)
    count.copy_(count_out)
    steps.copy_(steps + seen.long())
    skipped.copy_(skipped + (~finite).long())
    has = (count_out > 0).float()
    floor = eps * (var_out * has).sum() / has.sum().clamp(min=1.0)
    return (var_out + floor).clamp(min=TINY)


def k_phi(x: Tensor, mu: Tensor, rdenom: Tensor) -> Tensor:
    return _phi(x, mu, rdenom)


def k_replace(z: Tensor, mu: Tensor, rdenom: Tensor, mask: Optional[Tensor], thresh: Optional[Tensor],
              kind: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Score, select and write ``where(selected, mu, z)`` and the uint8 selection; for the
    ``gt`` rule (the moving threshold needs it) also the count of selected values."""
    sel = _select(_phi(z, mu, rdenom), mask, kind, thresh)
    out = torch.where(sel, mu.to(z.dtype), z)
    u8 = _as_u8(sel)
    return out, u8, (u8.sum(dtype=torch.float32) if kind == "gt" else None)


def k_select(z: Tensor, mu: Tensor, rdenom: Tensor, mask: Optional[Tensor], thresh: Optional[Tensor],
             kind: str) -> tuple[Tensor, Optional[Tensor]]:
    """Score and select only (strategies that keep the forward value); count as ``k_replace``."""
    u8 = _as_u8(_select(_phi(z, mu, rdenom), mask, kind, thresh))
    return u8, (u8.sum(dtype=torch.float32) if kind == "gt" else None)


def k_grad_scale(grad: Tensor, sel: Tensor, g: float) -> Tensor:
    """``where(sel, g * grad, grad)`` as ``(grad - t) + g * t`` with ``t = grad * sel``:
    exact for finite gradients (a 0/1 product), and fast to vectorise."""
    if not torch.compiler.is_compiling():  # eager (small tensors): two operators
        return torch.where(sel.view(torch.bool), grad * g, grad)
    t = grad * sel.to(grad.dtype)
    return (grad - t) + t * g if g != 0.0 else grad - t


def k_grad_reg(grad: Tensor, z: Tensor, sel: Tensor, mu: Tensor, coef: Tensor, log_eps: Optional[Tensor]) -> Tensor:
    """``grad + dR/dz`` on selected values: quadratic ``coef * (z - mu)``, log
    ``coef * (z - mu) / ((z - mu)^2 + log_eps)`` (float32, float64 for float64 ``z``)."""
    work = torch.promote_types(z.dtype, torch.float32)
    d = z.to(work) - mu.to(work)
    extra = d * coef.to(work) if log_eps is None else d * coef.to(work) / (d * d + log_eps.to(work))
    return grad + (extra * sel.to(work)).to(grad.dtype)


# ---------------------------------------------------------------------------- compile policy
def compile_mode() -> str:
    """``MEMEL_FUSED_COMPILE``: ``auto`` (default: large tensors), ``always`` or ``never``."""
    mode = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"{COMPILE_ENV} must be 'auto', 'always' or 'never', got {mode!r}")
    return mode


def pays(numel: int) -> bool:
    """Whether the fast path is worth taking for a call on ``numel`` values.

    ``auto``: from :data:`COMPILE_MIN_NUMEL` values on (below it a step is its fixed
    cost, and the reference path's few eager operators cost less than the fast path's
    bookkeeping); ``always`` / ``never`` (compiled / eager kernels): at every size.
    """
    return compile_mode() != "auto" or numel >= COMPILE_MIN_NUMEL


def _has_fake(args: tuple) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return any(isinstance(a, FakeTensor) for a in args)


def use_triton(t: Tensor) -> bool:
    """Whether the hand-written Triton kernels (:mod:`.fused_triton`) run for ``t``:
    opt-in (``MEMEL_FUSED_BACKEND=triton``), CUDA tensors only."""
    if os.environ.get(BACKEND_ENV, "compile").strip().lower() != "triton" or not t.is_cuda:
        return False
    from . import fused_triton

    return fused_triton.available()


class Kernel:
    """One kernel: the eager function and, made on first use, its compiled version.

    A compilation failure (no C++ compiler, an unsupported backend) warns once and
    leaves the eager version in charge: same values, more passes.
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._compiled: Optional[Callable] = None
        self.failed = False

    def compiles(self, numel: int) -> bool:
        """Whether a call on ``numel`` values would run the compiled kernel."""
        mode = compile_mode()
        return not self.failed and (mode == "always" or (mode == "auto" and numel >= COMPILE_MIN_NUMEL))

    def __call__(self, *args, numel: int = 0, **kwargs):
        use = self.compiles(numel)
        # Inside a traced graph the eager ops are traced (fused by the outer compiler);
        # fake tensors (shape-only runs, e.g. benchmarks/memory.py) need no kernel.
        if use and not torch.compiler.is_compiling() and not _has_fake(args):
            if self._compiled is None:
                self._compiled = torch.compile(self.fn, dynamic=None)
            try:
                return self._compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure: fall back, once
                self.failed = True
                warnings.warn(
                    f"memel fused kernel {self.fn.__name__}: torch.compile failed ({type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}); using the eager kernel",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.fn(*args, **kwargs)


MOMENTS = Kernel(k_moments)
MOMENTS_MASKED = Kernel(k_moments_masked)
PHI = Kernel(k_phi)
UPDATE_SCALE = Kernel(k_update_scale)
REPLACE = Kernel(k_replace)
SELECT = Kernel(k_select)
GRAD_SCALE = Kernel(k_grad_scale)
GRAD_REG = Kernel(k_grad_reg)


# ---------------------------------------------------------------------------- public functions
@torch.no_grad()
def batch_moments(x: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`~memel_lightning.inhibition.moments.batch_moments`
    (count, mean, M2 per column, float32), in one kernel."""
    numel = x.numel()
    if mask is None:
        mean, m2 = MOMENTS(x, numel=numel)
        n = torch.full((x.shape[1],), float(x.shape[0]), device=x.device)
        return n, mean, m2
    return MOMENTS_MASKED(x, mask, numel=numel)


def can_update(moments, numel: Optional[int] = None) -> bool:
    """Whether :func:`update_and_scale` handles these statistics: initialised, fixed size,
    ``nonfinite="skip"``, no cross-rank reduction, and (given ``numel``, the batch's
    values) a batch its kernel is compiled for: eagerly, ``RunningMoments.update`` and
    ``scale_parameters`` run fewer operators."""
    import torch.distributed as dist

    distributed = moments.sync_dist and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if numel is not None and not UPDATE_SCALE.compiles(numel):
        return False
    return moments.initialized and not moments.variable_size and moments.nonfinite == "skip" and not distributed


@torch.no_grad()
def update_and_scale(moments, x: Tensor, mask: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """Merge ``x`` (``(N, F)``) into ``moments`` (a :class:`RunningMoments` for which
    :func:`can_update` holds) and return ``(mu, denom)`` of ``scale_parameters``."""
    if x.shape[1] != moments.num_neurons:
        moments._check_size(x.shape[1])  # raises the reference's one-line error
    denom = UPDATE_SCALE(x, mask, moments.mean, moments.var, moments.count, moments.steps, moments.skipped,
                         moments.forget_steps, float(eps), numel=x.numel())
    return moments.mean, denom


def reciprocal(denom: Tensor) -> Tensor:
    """``1 / denom`` (per neuron, computed once per call)."""
    return torch.reciprocal(denom)


@torch.no_grad()
def phi_scores(x: Tensor, mu: Tensor, denom: Tensor) -> Tensor:
    """phi of every value (float32), as :func:`~memel_lightning.inhibition.scale.phi_from`
    up to one rounding."""
    return PHI(x, mu, reciprocal(denom), numel=x.numel())


@torch.no_grad()
def row_thresholds(x: Tensor, mu: Tensor, denom: Tensor, mask: Optional[Tensor], k: int) -> Tensor:
    """The k-th largest valid phi of every row, ``(N, 1)`` (topk with k > 1)."""
    phi = phi_scores(x, mu, denom)
    if mask is not None:
        phi.masked_fill_(~mask, float("-inf"))
    k = min(k, phi.shape[1])
    return phi.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)


class _ReplaceSelected(torch.autograd.Function):
    """Forward ``where(sel, mu, z)`` with the selection computed inside (fused);
    backward ``where(sel, g * grad, grad)``. Saves only the uint8 selection."""

    @staticmethod
    def forward(ctx, z, mu, rdenom, mask, thresh, kind, g):
        if use_triton(z):
            from . import fused_triton

            out, sel, hits = fused_triton.replace(z.detach(), mu, rdenom, mask, thresh, kind)
        else:
            out, sel, hits = REPLACE(z.detach(), mu, rdenom, mask, thresh, kind, numel=z.numel())
        ctx.mark_non_differentiable(*((sel,) if hits is None else (sel, hits)))
        ctx.set_materialize_grads(False)  # no zero gradients for the selection and the count
        ctx.g = float(g)
        if ctx.g != 1.0:  # g = 1 (straight-through) needs nothing for backward
            ctx.save_for_backward(sel.view(torch.bool))  # saved as what it is: a bool mask
        return out, sel, hits

    @staticmethod
    def backward(ctx, grad, _sel_grad, _hits_grad):
        if grad is None or ctx.g == 1.0:
            return (grad,) + (None,) * 6
        sel = ctx.saved_tensors[0].view(torch.uint8)
        if use_triton(grad):
            from . import fused_triton

            return (fused_triton.grad_scale(grad, sel, ctx.g),) + (None,) * 6
        return (GRAD_SCALE(grad, sel, ctx.g, numel=grad.numel()),) + (None,) * 6


class _IdentityRegularised(torch.autograd.Function):
    """Identity forward (a view of ``z``); backward adds the regulariser's gradient on
    the selected values. Saves ``z`` (shared with the tap's consumer) and the selection."""

    @staticmethod
    def forward(ctx, z, sel, mu, coef, log_eps):
        ctx.log_form = log_eps is not None
        ctx.save_for_backward(z, sel.view(torch.bool), mu, coef, log_eps if ctx.log_form else None)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        z, sel, mu, coef, log_eps = ctx.saved_tensors
        grad_z = GRAD_REG(grad, z, sel.view(torch.uint8), mu, coef, log_eps, numel=grad.numel())
        return grad_z, None, None, None, None


def inhibit(
    z: Tensor,
    mu: Tensor,
    denom: Tensor,
    spec: SelectSpec,
    *,
    mask: Optional[Tensor] = None,
    thresh: Optional[Tensor] = None,
    grad_scale: Optional[float] = None,
    reg_coef: Optional[Tensor] = None,
    reg_log_eps: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score, select and inhibit ``z`` (``(N, F)``) in one fused pass.

    ``mu``/``denom``: the tap's statistics (float32 ``(F,)``); ``spec``: the selection
    rule (``thresh``: per-row ``(N, 1)`` for ``ROW``, scalar tensor for ``GT``);
    ``mask``: bool ``(N, F)`` of valid values. The strategy is either
    ``grad_scale=g`` (the value becomes ``mu``, the gradient of selected values is
    multiplied by ``g``: ``reverse`` is ``-delta``, ``mean_nograd`` 0,
    ``mean_passthrough`` 1), or ``reg_coef`` (identity forward, backward adds
    ``reg_coef * (z - mu)`` on selected values, divided by ``(z - mu)^2 + reg_log_eps``
    when given: the log form), or neither (``none``: the identity). Returns the output,
    the selection (uint8 ``(N, F)``, 1 = selected; ``.view(torch.bool)`` is free) and
    the number of selected values (float32 scalar; ``None`` unless ``spec`` is ``GT``: the
    moving threshold needs it, the other rules do not pay for it).
    """
    if spec.kind in ("row", "gt") and thresh is None:
        raise ValueError(f"fused selection {spec.kind!r} needs thresh")
    rdenom = reciprocal(denom)
    if grad_scale is not None:
        return _ReplaceSelected.apply(z, mu, rdenom, mask, thresh, spec.kind, grad_scale)
    sel, hits = SELECT(z.detach(), mu, rdenom, mask, thresh, spec.kind, numel=z.numel())
    if reg_coef is not None and z.requires_grad and torch.is_grad_enabled():
        return _IdentityRegularised.apply(z, sel, mu, reg_coef, reg_log_eps), sel, hits
    return z, sel, hits


# ---------------------------------------------------------------------------- selector / strategy mapping
def selection_spec(selector) -> Optional[SelectSpec]:
    """The fused rule for a selector module, or None when the fast path does not know it."""
    from .selectors import MovingThreshold, Threshold, TopK

    if type(selector) is TopK:
        return TOP1 if selector.k == 1 else ROW
    if type(selector) is Threshold:
        return GT
    if type(selector) is MovingThreshold:
        # The first call starts tau at a quantile of phi (a sort, once): reference path.
        return GT if selector._started else None
    return None


def strategy_kind(strategy) -> Optional[str]:
    """``"replace"``, ``"regularize"``, ``"none"``, or None when the fast path does not know it."""
    from .strategies import MeanNoGrad, MeanPassthrough, NoInhibition, Regularize, ReverseDeactivation

    if type(strategy) in (ReverseDeactivation, MeanNoGrad, MeanPassthrough):
        return "replace"
    if type(strategy) is Regularize:
        return "regularize"
    if type(strategy) is NoInhibition:
        return "none"
    return None


def replace_grad_scale(strategy) -> float:
    """The gradient factor of a selected value: reverse ``-delta``, mean_nograd 0, passthrough 1."""
    from .strategies import MeanNoGrad, MeanPassthrough

    if type(strategy) is MeanNoGrad:
        return 0.0
    if type(strategy) is MeanPassthrough:
        return 1.0
    return -float(strategy.delta)


_TAU_CACHE: dict[tuple[float, torch.device], Tensor] = {}


def _fixed_tau(tau: float, device: torch.device) -> Tensor:
    # A tensor, not a Python float: a float argument would be a guard of the compiled kernel.
    key = (tau, device)
    if key not in _TAU_CACHE:
        _TAU_CACHE[key] = torch.tensor(tau, dtype=torch.float32, device=device)
    return _TAU_CACHE[key]


def apply(
    z2: Tensor,
    mu: Tensor,
    denom: Tensor,
    selector,
    strategy,
    mask: Optional[Tensor] = None,
    *,
    update: bool,
    inhibit: bool,
    loss_scale: Union[float, Tensor] = 1.0,
) -> Optional[Tensor]:
    """One call of a tap after its statistics are merged: select with ``selector`` and,
    when ``inhibit``, apply ``strategy`` to ``z2`` (``(N, F)``), fused.

    ``update``: training (the moving threshold moves). Returns the output (``z2`` itself
    when nothing is changed) or ``None`` when this selector or strategy has no fused
    version (the caller then runs the reference path). Metrics are not computed here:
    recording steps take the reference path, which has phi at hand.
    """
    spec = selection_spec(selector)
    kind = strategy_kind(strategy)
    if spec is None or kind is None:
        return None
    moving = spec is GT and hasattr(selector, "target_ratio")
    if not (inhibit and kind != "none") and not (moving and update):
        return z2  # nothing to change, no state to move: no pass over the values at all
    x = z2.detach()
    if spec is ROW:
        thresh = row_thresholds(x, mu, denom, mask, selector.k)
    elif spec is GT:
        thresh = selector.tau if moving else _fixed_tau(selector.tau, z2.device)
    else:
        thresh = None
    out = z2
    if inhibit and kind == "replace":
        out, _sel, hits = _inhibit_op(z2, mu, denom, spec, mask, thresh, grad_scale=replace_grad_scale(strategy))
    elif inhibit and kind == "regularize":
        from .strategies import TapStatistics

        coef, log_eps = strategy.coefficients(z2.shape[0], TapStatistics(mu, denom, loss_scale=loss_scale))
        out, _sel, hits = _inhibit_op(z2, mu, denom, spec, mask, thresh, reg_coef=coef, reg_log_eps=log_eps)
    else:
        _out, _sel, hits = _inhibit_op(x, mu, denom, spec, mask, thresh)
    if moving and update:
        valid = hits.new_full((), float(x.numel())) if mask is None else mask.sum(dtype=torch.float32)
        selector.update_from_counts(hits, valid)
    return out


def _inhibit_op(z2, mu, denom, spec, mask, thresh, **strategy) -> tuple[Tensor, Tensor, Tensor]:
    # ``apply``'s flag ``inhibit`` shadows the function of that name there.
    return inhibit(z2, mu, denom, spec, mask=mask, thresh=thresh, **strategy)
