"""Regression: MEmeL must return the tap's own shape before the late start too (Swin's
blocks output (B, H, W, C); a (B, N) view used to leak out during the warm-up batches)."""
import torch

from memel_lightning.inhibition import MEmeL


def test_output_keeps_shape_during_and_after_late_start():
    memel = MEmeL(k=1, late_start=2)
    memel.train()
    for step in range(4):
        z = torch.randn(6, 4, 4, 3)
        out = memel(z)
        assert out.shape == z.shape, step
        if step < 2:  # warm-up: statistics only, values untouched
            assert torch.equal(out, z)
        else:  # one value per sample replaced by the running mean
            assert int((out != z).flatten(1).sum(1).min()) >= 1
