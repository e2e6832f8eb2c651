"""Workers for tests/test_callback_ddp.py: imports only torch and the inhibition core,
so that the spawned processes start fast (importing Lightning costs seconds per rank)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from torch import nn

from memel_lightning.inhibition import MEmeL, attach

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


MEMEL_KW = dict(selector="topk", k=2, strategy="reverse", late_start=3, forget_steps=3, tau_report=2.0, max_share=0.15)


def run_steps(memel: MEmeL, masked: bool, rank: int | None, ragged: bool = False) -> tuple[list, list, list]:
    """``ragged``: every process pads only to its own longest sequence (dynamic padding),
    so the ranks' taps have different lengths in the same step. Every batch is a recorded
    step: returns the outputs, the input gradients and ``end_step``'s metrics."""
    outputs, grads, metrics = [], [], []
    for step, (z, mask) in enumerate(stream(masked or ragged)):
        if rank is not None:
            sizes = SPLITS[step % len(SPLITS)]
            z = z.split(sizes)[rank]
            mask = None if mask is None else mask.split(sizes)[rank]
        if ragged:
            longest = int(mask.sum(1).max())
            z, mask = z[:, :longest], mask[:, :longest]
        x = z.clone().requires_grad_()
        memel.begin_step(record=True)
        out = memel(x, mask)
        (0.5 * out.square()).sum().backward()  # elementwise: independent of the sharding
        metrics.append(memel.end_step())
        outputs.append(out.detach())
        grads.append(x.grad)
    return outputs, grads, metrics


def run_tapset(rank: int | None, sync: bool) -> list:
    """Two taps of a small network through attach/TapSet, every batch a recorded step:
    returns ``TapSet.end_step()`` per step (per-tap metrics and aggregates)."""
    torch.manual_seed(0)  # the same weights on every rank
    net = nn.Sequential(nn.Linear(L * H, 12), nn.ReLU(), nn.Linear(12, 7))
    results = []
    factory = lambda name: MEmeL(name=name, sync_dist=sync, **MEMEL_KW)  # noqa: E731
    with attach(net, ["0", "2"], factory) as taps:
        for step, (z, _) in enumerate(stream(False)):
            x = z.reshape(8, -1)
            if rank is not None:
                x = x.split(SPLITS[step % len(SPLITS)])[rank]
            taps.begin_step(record=True)
            net(x).square().sum().backward()
            results.append(taps.end_step())
    return results


def case_options(case) -> dict:
    """MEmeL settings of a test case (see ``_worker``)."""
    if case == "ragged":
        return dict(MEMEL_KW, variable_shape=True)
    if case == "regularize":
        return dict(MEMEL_KW, strategy="regularize", reg_lambda=0.5)
    return dict(MEMEL_KW)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Runs the stream without and with a mask on this rank's shards; saves what it saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        cases = {False: dict(masked=False), True: dict(masked=True), "ragged": dict(masked=True, ragged=True),
                 "regularize": dict(masked=True)}
        for case, how in cases.items():
            memel = MEmeL(sync_dist=True, name="tap", **case_options(case))
            outputs, grads, metrics = run_steps(memel, rank=rank, **how)
            results[case] = {"state": memel.state_dict(), "step": memel.step, "outputs": outputs, "grads": grads,
                             "metrics": metrics}
        results["tapset"] = run_tapset(rank, sync=True)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
