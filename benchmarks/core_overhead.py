"""Cost of MEmeL's forward+backward on one tap: the fast path, the reference path,
the authors'-style straightforward implementation, and the memory-bound floor.

For activations shaped like a Swin stage-3 block output (256, 196, 384), a BERT block
output (32, 128, 768) and a tiny one (8, 4, 16: the fixed per-call cost), time
forward+backward in training mode past the late start (every step merges the
statistics, scores, selects and inhibits) of

- ``fused``: :class:`~memel_lightning.inhibition.MEmeL` with ``impl="fused"`` (the
  default; ``inhibition/fused.py``: compiled kernels for large tensors);
- ``reference``: the same module with ``impl="reference"`` (op by op, docs/method.md);
- ``naive``: the straightforward unfused implementation of the formulas, as the
  authors' ``EmeL.py`` computes them (separate mean/var/phi tensors, ``torch.topk`` +
  ``scatter``, ``-delta*z + (mu + delta*z).detach()``), written here;
- ``floor``: ``z * 2`` forward+backward on the same tensor (read z, write y; read the
  gradient, write it): 16 bytes per value, 2 kernels.

Variants are interleaved within each repeat (machine load hits all alike). On CPU the
time of a step is the CPU time of the (single) thread (``time.thread_time``: robust to
other processes on a shared machine) and the wall time is printed next to it; the
median and the spread (min-max) of the repeats are reported. ``bytes`` and
``kernels`` per step are counted once per variant with
``benchmarks/dispatch_counter.py`` (every op that launches a kernel, the bytes it reads
and writes); a fused kernel counts as one kernel reading its inputs and writing its
outputs once (what its compiled version does; the eager fallback moves more).

Targets (issue 12): ``fused`` topk k=1 and moving threshold with ``reverse`` within
1.75x of the floor at the two large shapes, ``regularize`` within 2x, and never slower
than ``naive`` at any shape.

    OMP_NUM_THREADS=1 python benchmarks/core_overhead.py            # CPU, 1 thread
    python benchmarks/core_overhead.py --quick                      # fewer repeats
    python benchmarks/core_overhead.py --device cuda                # GPU (synchronised)
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dispatch_counter import DispatchCounter, OpRecord, footprint  # noqa: E402
from memel_lightning.inhibition import MEmeL, fused  # noqa: E402

SHAPES = {
    "swin_s3": (256, 196, 384),
    "bert": (32, 128, 768),
    # compute-free: measures the fixed per-step cost (operator dispatch, kernel launches),
    # which dominates on a GPU for the sizes above (a pass over 12.6 MB takes ~5 us on an H100)
    "tiny": (8, 4, 16),
}
DEFAULT_SHAPES = ["swin_s3", "bert", "tiny"]
TARGETS = {"topk k=1 reverse": 1.75, "moving_threshold reverse": 1.75, "moving_threshold regularize": 2.0}


class NaiveMEmeL:
    """The same formulas (docs/method.md §2-§5), written the obvious way, unfused."""

    def __init__(self, selector: str, k: int = 1, target_ratio: float = 0.02, delta: float = 1.0,
                 forget_steps: int = 10, eps: float = 0.01, lr: float = 0.1) -> None:
        self.selector, self.k, self.rho, self.delta = selector, k, target_ratio, delta
        self.nf, self.eps, self.lr = forget_steps, eps, lr
        self.mean: Optional[Tensor] = None
        self.var: Optional[Tensor] = None
        self.count = 0
        self.steps = 0
        self.tau: Optional[Tensor] = None

    def __call__(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        z2 = z.reshape(b, -1)
        x = z2.detach().float()
        # Lemma 3.2: batch mean and biased variance, then the merge (with forgetting)
        mb = x.mean(0)
        vb = x.var(0, unbiased=False)
        if self.mean is None:
            self.mean, self.var, self.count = mb, vb * b / (b - 1), b
        else:
            m = b * self.nf if self.steps >= self.nf else self.count
            mean = (m * self.mean + b * mb) / (m + b)
            var = m * b * (self.mean - mb) ** 2 / ((m + b - 1) * (m + b)) + (b * vb + (m - 1) * self.var) / (m + b - 1)
            self.mean, self.var, self.count = mean, var, self.count + b
        self.steps += 1
        # Monosemantic Scale with the updated statistics
        phi = (x - self.mean) ** 2 / (self.var + self.eps * self.var.mean())
        if self.selector == "topk":
            idx = torch.topk(phi, min(self.k, phi.shape[1]), dim=1).indices
            sel = torch.zeros_like(phi, dtype=torch.bool).scatter_(1, idx, True)
        else:
            if self.tau is None:
                flat = phi.flatten()
                self.tau = flat.kthvalue(math.ceil((1 - self.rho) * flat.numel())).values
            sel = phi > self.tau
            frac = sel.float().mean()
            self.tau = self.tau * torch.exp(self.lr * ((frac - self.rho) / self.rho).clamp(-1, 1))
        mu = self.mean.to(z.dtype)
        rd = -self.delta * z2 + (mu + self.delta * z2).detach()  # Reverse Deactivation
        return torch.where(sel, rd, z2).reshape(z.shape)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)




# ---------------------------------------------------------------------------- counting
@contextmanager
def fused_kernels_as_one(counter: DispatchCounter) -> Iterator[None]:
    """While active, every call of a fused kernel (``inhibition/fused.py``) is recorded in
    ``counter`` as ONE kernel reading its tensor inputs and writing its outputs once (what
    the compiled kernel does); the eager ops that compute it are not recorded."""
    original = fused.Kernel.__call__

    def counted(kernel, *args, numel: int = 0, **kwargs):
        with _disable_current_modes():
            out = kernel.fn(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        read = sum(footprint(t) for t in {id(t): t for t in inputs}.values())
        written = sum(t.numel() * t.element_size() for t in outputs)
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        counter.records.append(OpRecord(counter.region_name, phase, f"fused::{kernel.fn.__name__}", 1, read,
                                        written, 0, inputs[0].dtype if inputs else None))
        return out

    fused.Kernel.__call__ = counted
    try:
        yield
    finally:
        fused.Kernel.__call__ = original


def count_step(step: Callable[[], None]) -> tuple[int, int]:
    """``(kernels, bytes)`` of one step (benchmarks/dispatch_counter.py's rules)."""
    counter = DispatchCounter()
    with fused_kernels_as_one(counter), counter:
        step()
    total = counter.total()
    return total.kernels, total.bytes


# ---------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(fn: Callable[[Tensor], Tensor], z: Tensor, grad: Tensor) -> Callable[[], None]:
    def step() -> None:
        zz = z.detach().requires_grad_()
        out = fn(zz)
        out.backward(grad)
    return step


def time_once(step: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """``(cpu seconds of this thread, wall seconds)``; on CUDA both are wall time."""
    sync(device)
    c0, t0 = time.thread_time(), time.perf_counter()
    step()
    sync(device)
    wall = time.perf_counter() - t0
    return (wall if device.type == "cuda" else time.thread_time() - c0), wall


def variants(shape: tuple[int, ...], device: torch.device) -> dict[str, Callable[[Tensor], Tensor]]:
    neurons = math.prod(shape[1:])
    configs = {
        "topk k=1 reverse": dict(selector="topk", k=1, strategy="reverse"),
        "topk k=100 reverse": dict(selector="topk", k=100, strategy="reverse"),
        "moving_threshold reverse": dict(selector="moving_threshold", target_ratio=0.02, strategy="reverse"),
        "moving_threshold regularize": dict(selector="moving_threshold", target_ratio=0.02, strategy="regularize"),
    }
    out: dict[str, Callable[[Tensor], Tensor]] = {"floor (z*2)": lambda t: t * 2.0}
    for name, cfg in configs.items():
        if cfg.get("k", 1) > neurons:
            continue  # MEmeL refuses k above the tap's neurons
        for impl in ("fused", "reference"):
            out[f"{impl} {name}"] = MEmeL(late_start=0, impl=impl, **cfg).to(device).train()
        if cfg["strategy"] == "reverse":
            out[f"naive {name}"] = NaiveMEmeL(cfg["selector"], k=cfg.get("k", 1), target_ratio=0.02)
    return out


def bench_shape(shape, device, dtype, repeats, warmup) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    fns = variants(shape, device)
    steps = {name: step_fn(fn, z, grad) for name, fn in fns.items()}
    for _ in range(warmup):  # also the moving threshold's start and the kernels' compilation
        for step in steps.values():
            step()
    counts = {name: count_step(step) for name, step in steps.items()}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    wall: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            c, w = time_once(step, device)
            cpu[name].append(c)
            wall[name].append(w)
    floor = statistics.median(cpu["floor (z*2)"])
    floor_wall = statistics.median(wall["floor (z*2)"])
    rows = []
    for name in steps:
        med = statistics.median(cpu[name])
        base = name.split(" ", 1)[1] if " " in name and not name.startswith("floor") else None
        naive = statistics.median(cpu[f"naive {base}"]) if base and f"naive {base}" in cpu else None
        rows.append(dict(
            name=name, ms=med * 1e3, lo=min(cpu[name]) * 1e3, hi=max(cpu[name]) * 1e3, ratio=med / floor,
            wall_ratio=statistics.median(wall[name]) / floor_wall, vs_naive=None if naive is None else med / naive,
            kernels=counts[name][0], bytes_per_value=counts[name][1] / z.numel(), target=TARGETS.get(base)
            if name.startswith("fused") else None,
        ))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 9, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    clock = "wall time" if device.type == "cuda" else "thread CPU time"
    print(f"MEmeL core overhead: forward+backward, {clock}, median [min-max] of {repeats} interleaved repeats "
          f"(warm-up {args.warmup}), {args.dtype}, {where}, torch {torch.__version__}, "
          f"{fused.COMPILE_ENV}={fused.compile_mode()}")
    failures = []
    for key in args.shapes:
        shape = SHAPES[key]
        print(f"\n{key} {shape} ({math.prod(shape) / 1e6:.2f}M values)")
        print(f"  {'variant':<36}{'ms':>9}{'[min-max]':>17}{'x floor':>9}{'(wall)':>8}{'/naive':>8}"
              f"{'kernels':>9}{'B/value':>9}  target")
        reps = repeats * 20 if math.prod(shape) < 1e5 else repeats  # tiny: cheap, noisy
        for r in bench_shape(shape, device, dtype, reps, args.warmup):
            vs = "" if r["vs_naive"] is None else f"{r['vs_naive']:.2f}"
            verdict = ""
            if r["target"] is not None and key != "tiny":
                ok = r["ratio"] <= r["target"]
                verdict = f"<= {r['target']}x {'met' if ok else 'MISSED'}"
                failures += [] if ok else [f"{key} {r['name']}"]
            if r["vs_naive"] is not None and r["name"].startswith("fused") and r["vs_naive"] > 1.0:
                verdict += " SLOWER THAN NAIVE"
                failures.append(f"{key} {r['name']} vs naive")
            print(f"  {r['name']:<36}{r['ms']:>9.3f}{'[' + format(r['lo'], '.3f') + '-' + format(r['hi'], '.3f') + ']':>17}"
                  f"{r['ratio']:>9.2f}{r['wall_ratio']:>8.2f}{vs:>8}{r['kernels']:>9}{r['bytes_per_value']:>9.1f}  {verdict}")
    print("\ntargets: " + ("all met" if not failures else "missed: " + ", ".join(failures)))


if __name__ == "__main__":
    main()
