"""Step-time overhead of monosemantic inhibition during causal-LM pre-training.

Times one training step (forward, backward, AdamW update) of the Pythia presets for
three variants, interleaved round by round so that load on a shared machine hits all
of them alike, and prints each variant's median step time and its ratio to the
baseline measured in the same run:

- ``baseline``: the model alone;
- ``memel_topk``: MEmeL (per-sample top-1 with ``reduce_dims=[0]``, so a sample is a
  token, Reverse Deactivation) on every layer's MLP activation;
- ``l2e``: L2E (one moving threshold per tap, ``rho = 2 %``, regularisation-style
  inhibition) on the same taps.

Both inhibited variants run past their late start (statistics, selection and
inhibition all active) and record no metrics, as on the non-logging steps of a run.

    # CPU (short sequences). On a shared CPU, one thread and process CPU time: wall time
    # and multi-threaded CPU time (OpenMP spin-waits) both depend on the other jobs.
    OMP_NUM_THREADS=1 python benchmarks/l2e_overhead.py --models pythia-70m pythia-410m --batch 2 --seq 64 \
        --warmup 1 --rounds 3 --steps 2 --clock process
    # GPU, bf16 autocast, Pythia's sequence length:
    python benchmarks/l2e_overhead.py --device cuda --batch 8 --seq 2048 --rounds 5 --steps 10
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memel_lightning.inhibition import MEmeL, attach  # noqa: E402
from memel_lightning.models.causal_lm import gpt_neox_config  # noqa: E402

VARIANTS = {
    "baseline": None,
    "memel_topk": dict(selector="topk", k=1, strategy="reverse", delta=1.0, reduce_dims=[0], late_start=1),
    "l2e": dict(selector="moving_threshold", target_ratio=0.02, strategy="regularize", reg_lambda=1e-3,
                reduce_dims=[0], late_start=1),
}


class Harness:
    """One model whose MLP activations can be switched between variants by hooks."""

    def __init__(self, preset: str, device: torch.device, batch: int, seq: int, vocab: int | None,
                 clock: str = "wall") -> None:
        from transformers import GPTNeoXForCausalLM

        overrides = {"vocab_size": vocab} if vocab else {}
        config = gpt_neox_config(preset, **overrides)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        self.model = GPTNeoXForCausalLM(config).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01,
                                     foreach=True)
        self.device = device
        self.ids = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)
        self.taps = [f"gpt_neox.layers.{i}.mlp.act" for i in range(len(self.model.gpt_neox.layers))]
        # calls outside begin_step/end_step: each a step of its own without metrics, as the
        # callback's non-logging steps
        self.memels = {
            name: {tap: MEmeL(name=tap, **kw).to(device) for tap in self.taps}
            for name, kw in VARIANTS.items() if kw is not None
        }
        self.tapset = None
        # process CPU time (all threads) is far less sensitive than wall time to other jobs on a shared CPU
        self.clock = time.process_time if clock == "process" else time.perf_counter
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def use(self, variant: str) -> None:
        if self.tapset is not None:
            self.tapset.remove()
            self.tapset = None
        if variant in self.memels:
            self.tapset = attach(self.model, self.taps, self.memels[variant].__getitem__)

    def step(self) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = self.clock()
        with self.autocast:
            logits = self.model(input_ids=self.ids[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), self.ids[:, 1:].flatten())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync()
        return self.clock() - t0


def run(preset: str, args: argparse.Namespace) -> dict[str, list[float]]:
    device = torch.device(args.device)
    h = Harness(preset, device, args.batch, args.seq, args.vocab, args.clock)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    for v in order:  # warm-up: kernels, allocator, the inhibitors' statistics and late start
        h.use(v)
        for _ in range(args.warmup):
            h.step()
    for r in range(args.rounds):
        rotated = order[r % len(order):] + order[: r % len(order)]
        for v in rotated:
            h.use(v)
            times[v].extend(h.step() for _ in range(args.steps))
    h.use("baseline")
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["pythia-70m", "pythia-410m"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=None, help="override the 50304-token vocabulary")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall time (GPU, idle machines) or process CPU time (a shared CPU)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch} x seq {args.seq}; {args.rounds} rounds x {args.steps} steps, "
          f"variants interleaved; {args.clock} clock; torch {torch.__version__}")
    print(f"{'model':<12} {'variant':<11} {'median step (s)':>16} {'ratio':>8} {'overhead':>9}")
    for preset in args.models:
        times = run(preset, args)
        base = statistics.median(times["baseline"])
        for v, ts in times.items():
            med = statistics.median(ts)
            print(f"{preset:<12} {v:<11} {med:>16.4f} {med / base:>8.3f} {100 * (med / base - 1):>8.1f}%")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
