"""Hand-written Triton kernels of the fused step (CUDA; opt-in with ``MEMEL_FUSED_BACKEND=triton``).

One program per row scores, selects and writes the row: for ``topk`` with ``k=1`` it
reads the row twice (row maximum of phi, then the output), the second time from L2, so
the pass costs one read of ``z`` from memory, one write of the output and one byte of
mask per value. The backward kernel reads the gradient and the mask and writes the
gradient. These kernels have the semantics of :mod:`.fused`'s ``k_replace`` and
``k_grad_scale`` (phi as ``(z - mu)^2 * (1/denom)`` in float32, NaN rows select nothing,
ties all selected); their correctness is tested on CPU with Triton's interpreter
(``TRITON_INTERPRET=1``, tests/test_fastpath_triton.py). Their speed has not been measured
on a GPU here: the default on CUDA stays the ``torch.compile`` kernels of :mod:`.fused`.

Example (needs Triton; on CPU only under ``TRITON_INTERPRET=1``):
    >>> import torch
    >>> available() in (True, False)
    True
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA builds of torch
    triton = None
    tl = None

KIND_CODE = {"top1": 0, "row": 1, "gt": 2}
BLOCK = 1024


def available() -> bool:
    """Triton is importable (kernels run on CUDA tensors, or on CPU under the interpreter)."""
    return triton is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def _replace_rows(z_ptr, mu_ptr, rden_ptr, mask_ptr, thr_ptr, out_ptr, sel_ptr, hits_ptr, n_cols,
                      KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        base = row.to(tl.int64) * n_cols
        cols = tl.arange(0, BLOCK)
        if KIND == 0:  # top1: the row's maximum valid phi (NaN propagates, as amax does)
            acc = tl.full([BLOCK], float("-inf"), tl.float32)
            nans = tl.zeros([BLOCK], dtype=tl.int32)
            for start in range(0, n_cols, BLOCK):
                offs = start + cols
                inb = offs < n_cols
                x = tl.load(z_ptr + base + offs, mask=inb, other=0.0).to(tl.float32)
                mu = tl.load(mu_ptr + offs, mask=inb, other=0.0)
                r = tl.load(rden_ptr + offs, mask=inb, other=0.0)
                d = x - mu
                phi = d * d * r
                valid = inb
                if HAS_MASK:
                    valid = valid & (tl.load(mask_ptr + base + offs, mask=inb, other=0) != 0)
                nans += (valid & (phi != phi)).to(tl.int32)
                acc = tl.maximum(acc, tl.where(valid & (phi == phi), phi, float("-inf")))
            kth = tl.max(acc, 0)
            kth = tl.where(tl.sum(nans, 0) > 0, float("nan"), kth)  # amax propagates NaN
        elif KIND == 1:
            kth = tl.load(thr_ptr + row)
        else:
            kth = tl.load(thr_ptr)
        count = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(0, n_cols, BLOCK):
            offs = start + cols
            inb = offs < n_cols
            raw = tl.load(z_ptr + base + offs, mask=inb, other=0.0)
            x = raw.to(tl.float32)
            mu = tl.load(mu_ptr + offs, mask=inb, other=0.0)
            r = tl.load(rden_ptr + offs, mask=inb, other=0.0)
            d = x - mu
            phi = d * d * r
            if KIND == 2:
                sel = phi > kth
            else:
                sel = phi >= kth
            sel = sel & inb
            if HAS_MASK:
                sel = sel & (tl.load(mask_ptr + base + offs, mask=inb, other=0) != 0)
            out = tl.where(sel, mu.to(raw.dtype), raw)
            tl.store(out_ptr + base + offs, out, mask=inb)
            tl.store(sel_ptr + base + offs, sel.to(tl.uint8), mask=inb)
            count += sel.to(tl.int32)
        tl.atomic_add(hits_ptr, tl.sum(count, 0))

    @triton.jit
    def _grad_scale(grad_ptr, sel_ptr, out_ptr, n, g, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inb = offs < n
        grad = tl.load(grad_ptr + offs, mask=inb, other=0.0)
        sel = tl.load(sel_ptr + offs, mask=inb, other=0) != 0
        scaled = (grad.to(tl.float32) * g).to(grad.dtype)
        tl.store(out_ptr + offs, tl.where(sel, scaled, grad), mask=inb)


def replace(z: Tensor, mu: Tensor, rdenom: Tensor, mask: Optional[Tensor], thresh: Optional[Tensor],
            kind: str) -> tuple[Tensor, Tensor, Tensor]:
    """Triton version of ``fused.k_replace``: ``(out, uint8 selection, float32 count)``."""
    if triton is None:
        raise RuntimeError("fused_triton.replace needs Triton")
    z = z.contiguous()
    n_rows, n_cols = z.shape
    out = torch.empty_like(z)
    sel = torch.empty(z.shape, dtype=torch.uint8, device=z.device)
    hits = torch.zeros((), dtype=torch.int32, device=z.device)
    has_mask = mask is not None
    mask_arg = mask.contiguous().view(torch.uint8) if has_mask else sel  # unused when HAS_MASK is False
    thr = thresh.float().contiguous().reshape(-1) if thresh is not None else rdenom
    _replace_rows[(n_rows,)](z, mu.float().contiguous(), rdenom.float().contiguous(), mask_arg, thr, out, sel, hits,
                             n_cols, KIND=KIND_CODE[kind], HAS_MASK=has_mask, BLOCK=BLOCK)
    return out, sel, hits.float()


def grad_scale(grad: Tensor, sel: Tensor, g: float) -> Tensor:
    """Triton version of ``fused.k_grad_scale``: ``where(sel, g * grad, grad)``."""
    if triton is None:
        raise RuntimeError("fused_triton.grad_scale needs Triton")
    grad = grad.contiguous()
    out = torch.empty_like(grad)
    n = grad.numel()
    _grad_scale[(triton.cdiv(n, BLOCK),)](grad, sel.contiguous(), out, n, float(g), BLOCK=BLOCK)
    return out
