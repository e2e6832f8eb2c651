"""Cost of MEmeL's forward+backward on one tap, against two baselines.

For activations shaped like a Swin stage-3 block output (256, 196, 384) and a BERT block
output (32, 128, 768), time forward+backward (training mode, past the late start, so
every step merges the statistics, scores, selects and inhibits) of

- ``memel``: :class:`memel_lightning.inhibition.MEmeL` (topk k=1, topk k=100,
  moving_threshold; strategy ``reverse``);
- ``naive``: a straightforward unfused implementation of the same formulas written
  here (separate mean/var/phi tensors, ``torch.topk`` + ``scatter`` for the selection,
  ``-delta*z + (mu + delta*z).detach()`` for Reverse Deactivation);
- ``floor``: one plain elementwise op (``z * 2``) forward+backward on the same tensor:
  the memory-bound floor (read z, write y; read grad, write grad_z).

Variants are interleaved within each repeat (so that machine load affects all alike)
and the median of the repeats is reported; every ratio comes from this one run.

    python benchmarks/core_overhead.py                # CPU
    python benchmarks/core_overhead.py --quick        # fewer repeats
    python benchmarks/core_overhead.py --device cuda  # GPU (CUDA events, synchronised)
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from memel_lightning.inhibition import MEmeL  # noqa: E402

SHAPES = {
    "swin_s3": (256, 196, 384),
    "bert": (32, 128, 768),
    # compute-free: measures the fixed per-step cost (operator dispatch, kernel launches),
    # which dominates on a GPU for the sizes above (a pass over 12.6 MB takes ~5 us on an H100)
    "tiny": (8, 4, 16),
}
DEFAULT_SHAPES = ["swin_s3", "bert", "tiny"]


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


def step_fn(fn: Callable[[Tensor], Tensor], z: Tensor, grad: Tensor) -> Callable[[], None]:
    def step() -> None:
        zz = z.detach().requires_grad_()
        out = fn(zz)
        out.backward(grad)
    return step


def time_once(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0


def bench_shape(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, repeats: int, warmup: int) -> list[tuple]:
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    configs = {
        "topk k=1": dict(selector="topk", k=1),
        "topk k=100": dict(selector="topk", k=100),
        "moving_threshold": dict(selector="moving_threshold", target_ratio=0.02),
    }
    steps: dict[str, Callable[[], None]] = {"floor (z*2)": step_fn(lambda t: t * 2.0, z, grad)}
    neurons = math.prod(shape[1:])
    configs = {name: cfg for name, cfg in configs.items() if cfg.get("k", 1) <= neurons}  # MEmeL refuses k > neurons
    for name, cfg in configs.items():
        memel = MEmeL(strategy="reverse", delta=1.0, late_start=0, **cfg).to(device).train()
        # each call outside begin_step/end_step is a step without metrics, as the
        # callback's non-logging steps
        naive = NaiveMEmeL(cfg["selector"], k=cfg.get("k", 1), target_ratio=cfg.get("target_ratio", 0.02))
        steps[f"memel {name}"] = step_fn(memel, z, grad)
        steps[f"naive {name}"] = step_fn(naive, z, grad)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_once(step, device))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    floor = med["floor (z*2)"]
    rows = [("floor (z*2)", floor, 1.0, "")]
    for name in configs:
        ours, naive = med[f"memel {name}"], med[f"naive {name}"]
        rows.append((f"naive {name}", naive, naive / floor, ""))
        rows.append((f"memel {name}", ours, ours / floor, f"{ours / naive:.2f}"))
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 repeats: a few minutes on a 2-core CPU")
    parser.add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"MEmeL core overhead: forward+backward, median of {repeats} (warm-up {args.warmup}), {args.dtype}, {where}, "
          f"torch {torch.__version__}")
    for key in args.shapes:
        shape = SHAPES[key]
        print(f"\n{key} {shape} ({math.prod(shape) / 1e6:.1f}M values)")
        print(f"  {'variant':<26}{'ms':>10}{'x floor':>10}{'memel/naive':>13}")
        reps = repeats * 20 if math.prod(shape) < 1e5 else repeats  # tiny: cheap, noisy
        for name, seconds, ratio, vs in bench_shape(shape, device, dtype, reps, args.warmup):
            print(f"  {name:<26}{seconds * 1e3:>10.2f}{ratio:>10.2f}{vs:>13}")


if __name__ == "__main__":
    main()
