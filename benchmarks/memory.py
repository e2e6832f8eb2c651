"""Extra memory a MEmeL tap keeps alive for backward, per element of the tapped activation.

For one tap, a training forward runs twice, once with the MEmeL on the tapped
activation and once without, under ``torch.autograd.graph.saved_tensors_hooks``; every
tensor autograd saves is charged at the size of the storage it keeps alive, each
storage once (a view saved by two ops, or an output saved by the next layer too, costs
one storage). The difference, divided by the number of elements of the tapped
activation, is what the inhibition adds to the memory held between forward and
backward. The issue's target is at most 1 byte per element (a bool mask); the
figures are today's.

The tap sits where the project puts it: an activation ``z`` (output of a GELU, which
saves its *input*, so ``z`` itself is kept only by the consumer) feeding a linear
layer (which saves its input). Without inhibition the linear layer keeps ``z``; with
it, the linear layer keeps the inhibited output instead, plus whatever the inhibition
saves. Shapes and layouts are the project's taps, on fake tensors (``FakeTensorMode``:
nothing is allocated, sizes are exact):

- ``swin-t``: ``(128, 14, 14, 384)``, every value of an image a neuron;
- ``bert-base``: ``(32, 128, 768)``, every value of a sequence a neuron;
- ``pythia-410m``: ``(4, 2048, 4096)`` with ``reduce_dims=[0]`` (a token is a sample).

Activations are bfloat16 (as under bf16 autocast). Per-neuron statistics saved for
backward (``(F,)`` float32 vectors) are included; they are small per element only
when there are many samples per neuron.

    python benchmarks/memory.py                  # every selector x strategy, three taps
    python benchmarks/memory.py --taps pythia-410m --markdown memory.md
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from memel_lightning.inhibition import MEmeL  # noqa: E402

TAPS: dict[str, tuple[tuple[int, ...], dict[str, Any]]] = {
    "swin-t": ((128, 14, 14, 384), {}),
    "bert-base": ((32, 128, 768), {}),
    "pythia-410m": ((4, 2048, 4096), {"reduce_dims": [0]}),
}
SELECTORS: dict[str, dict[str, Any]] = {
    "topk": {"selector": "topk", "k": 1},
    "threshold": {"selector": "threshold", "tau": 9.0},
    "moving_threshold": {"selector": "moving_threshold", "target_ratio": 0.02},
}
STRATEGIES = ["reverse", "mean_nograd", "mean_passthrough", "regularize", "none"]


@dataclass
class SavedTensors:
    """Storages autograd saved during a forward, each counted once."""

    storages: dict[int, tuple[int, torch.dtype, tuple[int, ...]]] = field(default_factory=dict)

    def pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        self.storages.setdefault(StorageWeakRef(storage).cdata, (storage.nbytes(), t.dtype, tuple(t.shape)))
        return t

    @property
    def bytes(self) -> int:
        return sum(n for n, _, _ in self.storages.values())


def saved_by_forward(z_shape: tuple[int, ...], dtype: torch.dtype, memel: Optional[nn.Module]) -> SavedTensors:
    """Storages saved by ``linear(memel(gelu(x)))`` (``memel`` None: without the tap).

    The caller keeps the graph alive only inside: the storages are identified while
    every saved tensor is still referenced, so no identity is reused.
    """
    saved = SavedTensors()
    hidden = z_shape[-1]
    x = torch.randn(z_shape, dtype=dtype, requires_grad=True)
    consumer = nn.Linear(hidden, 8, dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        z = nn.functional.gelu(x)
        out = z if memel is None else memel(z)
        y = consumer(out)
    del y  # the graph (and the saved tensors) can go now
    return saved


def warmed_memel(options: dict[str, Any], z_shape: tuple[int, ...], dtype: torch.dtype) -> MEmeL:
    """A MEmeL past its late start whose statistics (and moving threshold) are sized."""
    memel = MEmeL(late_start=0, **options).train()
    z = torch.randn((2,) + tuple(z_shape[1:]), dtype=dtype)
    memel(z)
    memel(z)
    if hasattr(memel, "begin_step"):  # a non-logging step
        memel.begin_step(record=False)
    else:
        memel.record_metrics = False
    return memel


@dataclass
class MemoryRow:
    tap: str
    selector: str
    strategy: str
    elements: int
    extra_bytes: int
    extra_tensors: list[str]

    @property
    def bytes_per_element(self) -> float:
        return self.extra_bytes / self.elements


def measure(tap: str, selector: str, strategy: str, dtype: torch.dtype = torch.bfloat16,
            shape: Optional[tuple[int, ...]] = None, fake: bool = True) -> MemoryRow:
    """Extra saved bytes of one selector x strategy on one tap (``fake``: on fake tensors)."""
    default_shape, layout = TAPS[tap]
    z_shape = tuple(shape or default_shape)
    memel = warmed_memel({**SELECTORS[selector], "strategy": strategy, **layout}, z_shape, dtype)
    torch.manual_seed(0)
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext():
        base = saved_by_forward(z_shape, dtype, None)
        tapped = saved_by_forward(z_shape, dtype, memel)
    base_sizes = sorted(n for n, _, _ in base.storages.values())
    # Describe what is new: the tapped run's storages minus as many equal-sized ones of the base run.
    remaining = list(base_sizes)
    extra: list[str] = []
    for n, dt, sh in sorted(tapped.storages.values(), key=lambda s: -s[0]):
        if n in remaining:
            remaining.remove(n)
        else:
            extra.append(f"{str(dt).replace('torch.', '')}{list(sh)}")
    elements = 1
    for s in z_shape:
        elements *= s
    return MemoryRow(tap, selector, strategy, elements, tapped.bytes - base.bytes, extra)


def format_table(rows: list[MemoryRow], markdown: bool = False) -> str:
    header = ["tap", "selector", "strategy", "extra bytes / element", "extra saved tensors"]
    cells = [header] + [[r.tap, r.selector, r.strategy, f"{r.bytes_per_element:.3f}",
                         ", ".join(r.extra_tensors) or "-"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "|" + "|".join(" --- " for _ in header) + "|")
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells)


def main(argv: Optional[list[str]] = None) -> list[MemoryRow]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--taps", nargs="+", default=list(TAPS), choices=list(TAPS))
    p.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=list(SELECTORS))
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--markdown", metavar="FILE", default=None)
    args = p.parse_args(argv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows = [measure(t, s, g, dtype) for t in args.taps for s in args.selectors for g in args.strategies]
    print(f"extra memory saved for backward by one tap ({args.dtype} activations; target <= 1 byte/element)")
    print(format_table(rows))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_table(rows, markdown=True) + "\n")
    return rows


if __name__ == "__main__":
    main()
