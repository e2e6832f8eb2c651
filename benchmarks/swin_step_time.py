"""Training step time of a Swin classifier with and without MEmeL (one run, prints the ratio).

    python benchmarks/swin_step_time.py                      # GPU if present: Swin-T, batch 128, 224x224, bf16
    python benchmarks/swin_step_time.py --tiny --batch-size 32   # CPU-sized: the quickstart's tiny Swin on 32x32

A step is forward + loss + backward + AdamW step on a fixed random batch. MEmeL is
installed on the default taps (stage 3, blocks d/2-2 .. d/2+1: ImageClassifier.memel_taps) with the
paper's settings (top-1, reverse deactivation) past its late start, and is switched on and
off between rounds (interleaved, so drifting machine load hits both sides alike); the
reported figure is the median over rounds of the per-round mean step time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from memel_lightning.inhibition import MEmeL, MEmeLConfig, attach
from memel_lightning.models import ImageClassifier

TINY = dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), img_size=32, patch_size=2, window_size=4, in_chans=1)


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="swin_tiny_patch4_window7_224")
    p.add_argument("--tiny", action="store_true", help="the quickstart's 0.68 M-parameter Swin on 1x32x32 inputs")
    p.add_argument("--batch-size", type=int, default=128 if cuda else 16)
    p.add_argument("--steps", type=int, default=20 if cuda else 5, help="steps per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per side (with / without)")
    p.add_argument("--precision", choices=["32", "bf16", "16"], default="bf16" if cuda else "32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    kwargs = TINY if args.tiny else {}
    torch.manual_seed(0)
    module = ImageClassifier(model_name=args.model, num_classes=10 if args.tiny else 1000, model_kwargs=kwargs).to(device)
    cfg = module.model.pretrained_cfg
    chans, size = (1, 32) if args.tiny else (3, cfg["input_size"][-1])
    x = torch.randn(args.batch_size, chans, size, size, device=device)
    y = torch.randint(0, 10 if args.tiny else 1000, (args.batch_size,), device=device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler(enabled=args.precision == "16")

    config = MEmeLConfig(selector="topk", k=1, strategy="reverse", late_start=10)
    memels = {name: MEmeL(config, name=name).to(device) for name in module.memel_taps()}
    taps = attach(module, module.memel_taps(), memels.__getitem__)  # as MEmeLCallback installs them
    module.train()

    def step() -> None:
        # as the callback's non-logging steps: a step without metrics (forward outside
        # begin_step/end_step is a step of its own, no metrics)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(module(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(12):  # past MEmeL's late start (10) and the first-step allocations
        step()
    taps.remove()
    step()
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(2 * args.rounds):
        on = r % 2 == 0
        if on:
            taps = attach(module, module.memel_taps(), memels.__getitem__)  # the same MEmeLs again
        else:
            taps.remove()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        times[on].append((time.perf_counter() - t0) / args.steps)
    taps.remove()
    with_cb, without = statistics.median(times[True]), statistics.median(times[False])
    name = "tiny Swin (quickstart)" if args.tiny else args.model
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} ({torch.get_num_threads()} threads)")
    print(f"model: {name}, batch {args.batch_size}, input {chans}x{size}x{size}, precision {args.precision}")
    print(f"taps: {taps.names}")
    print(f"step time without MEmeL: {without * 1000:.1f} ms (rounds: {[round(t * 1000, 1) for t in times[False]]})")
    print(f"step time with MEmeL:    {with_cb * 1000:.1f} ms (rounds: {[round(t * 1000, 1) for t in times[True]]})")
    print(f"ratio with/without: {with_cb / without:.3f}  (overhead {100 * (with_cb / without - 1):+.1f} %)")


if __name__ == "__main__":
    main()
