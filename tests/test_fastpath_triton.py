"""The hand-written Triton kernels (inhibition/fused_triton.py) against the fused eager
kernels, on CPU under Triton's interpreter (TRITON_INTERPRET=1, in a subprocess so the
setting does not leak into other tests)."""
import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import torch
    from memel_lightning.inhibition import fused, fused_triton

    g = torch.Generator().manual_seed(0)
    checked = 0
    for dtype in (torch.float32, torch.float16):
        for n, f in ((5, 37), (3, 2100)):          # one partial block; several blocks per row
            z = (torch.randn(n, f, generator=g) * 2).to(dtype)
            z[0, 3] = z[0, 5] = 40.0                # a tie at the row maximum
            z[1, 7] = float("nan")                  # a NaN row selects nothing
            mu = torch.randn(f, generator=g) * 0.1
            rden = torch.rand(f, generator=g) + 0.5
            mask = torch.rand(n, f, generator=g) > 0.3
            cases = [("top1", None), ("gt", torch.tensor(2.5)),
                     ("row", torch.rand(n, 1, generator=g) * 3)]
            for kind, thr in cases:
                for m in (None, mask):
                    want = fused.k_replace(z, mu, rden, m, thr, kind)
                    got = fused_triton.replace(z, mu, rden, m, thr, kind)
                    assert torch.equal(got[0], want[0]) or torch.allclose(
                        got[0], want[0], equal_nan=True, rtol=0, atol=0), (kind, dtype, n, f)
                    assert torch.equal(got[1], want[1].to(torch.uint8)), (kind, dtype, n, f, m is None)
                    if kind == "gt":  # the count is made for the moving threshold's rule only
                        assert float(got[2]) == float(want[2]), (kind, float(got[2]), float(want[2]))
                    checked += 1
            grad = torch.randn(n, f, generator=g).to(dtype)
            sel = (torch.rand(n, f, generator=g) > 0.8).to(torch.uint8)
            for gs in (-1.0, 0.0, -2.5):
                assert torch.equal(fused_triton.grad_scale(grad, sel, gs), fused.k_grad_scale(grad, sel, gs)), gs
    assert fused.k_replace(z, mu, rden, None, None, "top1")[1][1].sum() == 0   # the NaN row
    print("checked", checked)
    """
)


def test_triton_kernels_match_the_fused_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checked 24" in result.stdout
