"""Workers for tests/test_callback_ddp.py: imports only torch and the inhibition core,
so that the spawned processes start fast (importing Lightning costs seconds per rank)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from memel_lightning.inhibition import MEmeL

WORLD = 2
STEPS = 7
L, H = 5, 6
# uneven shards: rank 0 gets SPLITS[step % 3][0] samples of the global batch
SPLITS = [(5, 3), (4, 4), (2, 6)]


def stream(masked: bool):
    """The global batches: (z, mask) with z (B, L, H); B = 8."""
    g = torch.Generator().manual_seed(1234)
    for step in range(STEPS):
        z = torch.randn(8, L, H, generator=g) * (1 + step) + step
        if masked:
            lengths = torch.randint(1, L + 1, (8,), generator=g)
            mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
        else:
            mask = None
        yield z, mask


MEMEL_KW = dict(selector="topk", k=2, strategy="reverse", late_start=3, forget_steps=3)


def run_steps(memel: MEmeL, masked: bool, rank: int | None, ragged: bool = False) -> tuple[list, list]:
    """``ragged``: every process pads only to its own longest sequence (dynamic padding),
    so the ranks' taps have different lengths in the same step."""
    outputs, grads = [], []
    for step, (z, mask) in enumerate(stream(masked or ragged)):
        if rank is not None:
            sizes = SPLITS[step % len(SPLITS)]
            z = z.split(sizes)[rank]
            mask = None if mask is None else mask.split(sizes)[rank]
        if ragged:
            longest = int(mask.sum(1).max())
            z, mask = z[:, :longest], mask[:, :longest]
        x = z.clone().requires_grad_()
        out = memel(x, mask)
        (0.5 * out.square()).sum().backward()  # elementwise: independent of the sharding
        outputs.append(out.detach())
        grads.append(x.grad)
    return outputs, grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Runs the stream without and with a mask on this rank's shards; saves what it saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for masked in (False, True):
            memel = MEmeL(sync_dist=True, name="tap", **MEMEL_KW)
            outputs, grads = run_steps(memel, masked, rank)
            results[masked] = {"state": memel.state_dict(), "step": memel.step, "outputs": outputs, "grads": grads}
        memel = MEmeL(sync_dist=True, variable_shape=True, name="tap", **MEMEL_KW)
        outputs, grads = run_steps(memel, True, rank, ragged=True)
        results["ragged"] = {"state": memel.state_dict(), "step": memel.step, "outputs": outputs, "grads": grads}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
