"""The MEmeL authors' HKO-7 comparison, end to end: ``python -m memel_lightning.protocols.hko7_paper``.

Per round (seed ``seed + round``), as in the authors' code (docs/nowcasting.md, "paper
protocol"):

1. train the baseline (``configs/convgru_hko7_paper_baseline.yaml``: their ConvGRU, 20k
   steps, Adam 1e-4 x0.7 every 5k, gradient clipped by value at 50) and keep its final
   weights;
2. from those weights, fine-tune 2k steps at a constant 2.4e-5 twice: with MEmeL
   (``convgru_hko7_paper_memel.yaml``) and without (``convgru_hko7_paper_finetune_baseline.yaml``);
3. test each fine-tune's *final* weights on the test split (sequences every 5 frames).

The report gives, per variant, B-MSE and B-MAE per output frame and their means over the
frames, averaged over rounds (with the spread over rounds), in the units of the paper's
table (docs/method.md §9 and §10): pixel values in [0, 1], the balanced error summed over
a frame's pixels and divided by the number of test sequences. ``--scale tiny`` runs the
same protocol scaled down for a CPU (few steps, narrow widths, small batches; same
kernels, strides, crop and masks) to check the machinery, e.g. on a synthetic tree
written by :func:`memel_lightning.data.synthetic_radar.generate` (480x480 frames).

Example (the CPU run of docs/nowcasting.md)::

    python -m memel_lightning.protocols.hko7_paper --root .cache/hko7_synthetic_480 --rounds 2 --scale tiny
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

VARIANTS = {
    "finetune_baseline": "convgru_hko7_paper_finetune_baseline.yaml",
    "memel": "convgru_hko7_paper_memel.yaml",
}
BASELINE = "convgru_hko7_paper_baseline.yaml"
METRICS = ("bmse", "bmae")
# Published HKO-7 figures (docs/method.md §10): B-MSE, B-MAE means over the output frames.
PAPER = {"original": (309.96, 1003.41), "MEmeL": (309.94, 1003.25), "MEmeL-Tune": (298.16, 998.81)}

# "tiny": the protocol's shape at CPU size: steps / 500 (baseline 40, x0.7 every 10, fine-tunes
# 4), learning rates x 10 so that so few steps move the weights, narrow widths, small batches.
TINY_PHASES = {
    "baseline": ["--trainer.max_steps", "40", "--trainer.val_check_interval", "40",
                 "--model.init_args.lr", "0.001", "--model.init_args.lr_step_size", "10"],
    "finetune": ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--model.init_args.lr", "0.00024"],
}
TINY_OVERRIDES = [
    "--model.init_args.arch_kwargs",
    '{"conv_channels": [4, 8, 8], "hidden_channels": [8, 8, 8], "up_channels": [4, 8, 8], "top_input_channels": 8}',
    "--data.init_args.batch_size", "2",
    "--data.init_args.eval_batch_size", "4",
    "--data.init_args.num_workers", "0",
    "--trainer.limit_val_batches", "1",
    "--trainer.accelerator", "cpu",
]


def default_configs_dir() -> Path:
    """The repository's ``configs/`` (this file is ``memel_lightning/protocols/hko7_paper.py``)."""
    return Path(__file__).resolve().parents[2] / "configs"


def _fit(config: Path, args: Sequence[str]) -> Any:
    """Run ``fit`` in-process through the package CLI; returns the LightningCLI object."""
    from memel_lightning.cli import main

    return main(["fit", "--config", str(config), *args])


def _test_final_weights(cli: Any, out_frames: int) -> dict[str, list[float]]:
    """Test the in-memory (final) model; per-frame B-MSE/B-MAE from the logged metrics."""
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    out = {}
    for m in METRICS:
        keys = [f"test_{m}_f{t:02d}" for t in range(1, out_frames + 1)]
        missing = [k for k in keys if k not in results]
        if missing:
            raise RuntimeError(f"test logged no {missing[0]} (is the test split empty?)")
        out[m] = [float(results[k]) for k in keys]
    return out


def run_round(root: str, round_idx: int, out_dir: Path, configs: Path, scale: str, seed: int) -> dict[str, Any]:
    """One round: baseline, then both fine-tunes from its final weights, each tested."""
    rdir = out_dir / f"round{round_idx}"
    common = ["--data.init_args.root", root, "--seed_everything", str(seed + round_idx),
              "--trainer.logger.init_args.save_dir", str(rdir), "--trainer.enable_progress_bar", "false"]
    if scale == "tiny":
        common += TINY_OVERRIDES

    def steps(phase: str) -> list[str]:
        return TINY_PHASES[phase] if scale == "tiny" else []

    started = time.perf_counter()
    base = _fit(configs / BASELINE, common + steps("baseline"))
    ckpt = rdir / "baseline_final.ckpt"
    base.trainer.save_checkpoint(str(ckpt))
    out_frames = int(base.model.hparams.out_frames)
    result: dict[str, Any] = {"seed": seed + round_idx, "baseline_checkpoint": str(ckpt)}
    for variant, config in VARIANTS.items():
        cli = _fit(configs / config, common + steps("finetune") + ["--model.init_args.init_from", str(ckpt)])
        result[variant] = _test_final_weights(cli, out_frames)
    result["seconds"] = time.perf_counter() - started
    return result


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows)]
    std = [math.sqrt(sum((v - m) ** 2 for v in col) / (n - 1)) if n > 1 else 0.0 for col, m in zip(zip(*rows), mean)]
    return mean, std


def summarise(rounds: list[dict[str, Any]]) -> str:
    """The report: per metric and variant, per-frame means over rounds and the frame mean
    (mean +- sample std over rounds of each round's frame mean)."""
    lines = [f"HKO-7, the MEmeL authors' protocol: {len(rounds)} round(s), final weights, test split."]
    lines.append("Units of the paper's table (docs/method.md §9): per output frame, the balanced error summed over")
    lines.append("the frame's pixels (values in [0, 1]) divided by the number of test sequences; 'mean' = over frames.")
    for metric, label in (("bmse", "B-MSE"), ("bmae", "B-MAE")):
        n_frames = len(rounds[0][next(iter(VARIANTS))][metric])
        head = f"{label:<18}" + "".join(f"{'t' + str(t):>9}" for t in range(1, n_frames + 1)) + f"{'mean':>10}{'+-':>9}"
        lines += ["", head]
        for variant in VARIANTS:
            per_frame, _ = _mean_std([r[variant][metric] for r in rounds])
            frame_means = [sum(r[variant][metric]) / n_frames for r in rounds]
            mean, std = _mean_std([[m] for m in frame_means])
            lines.append(f"{variant:<18}" + "".join(f"{v:9.2f}" for v in per_frame) + f"{mean[0]:10.2f}{std[0]:9.2f}")
    paper = ", ".join(f"{k} {v[0]:.2f} / {v[1]:.2f}" for k, v in PAPER.items())
    lines += ["", f"Paper (B-MSE / B-MAE means, docs/method.md §10): {paper}."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memel_lightning.protocols.hko7_paper",
        description="Run the MEmeL authors' HKO-7 comparison over rounds and print B-MSE/B-MAE per output frame.",
    )
    parser.add_argument("--root", required=True, help="HKO-7 root: radarPNG/, pd/, mask_dat.npz")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the paper averages 3)")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full", help="tiny: a CPU-sized run of the same protocol")
    parser.add_argument("--out", default="runs/hko7_paper", help="folder for logs, checkpoints and results.json")
    parser.add_argument("--seed", type=int, default=0, help="round r uses seed + r")
    parser.add_argument("--configs", default=None, help="folder of the convgru_hko7_paper_*.yaml configs")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    root = Path(args.root).expanduser()
    for need in ("pd", "radarPNG", "mask_dat.npz"):
        if not (root / need).exists():
            parser.error(f"--root {root} has no {need} (expected the HKO-7 release layout, see docs/nowcasting.md)")
    configs = Path(args.configs) if args.configs else default_configs_dir()
    missing = [c for c in (BASELINE, *VARIANTS.values()) if not (configs / c).is_file()]
    if missing:
        parser.error(f"--configs {configs} lacks {missing[0]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rounds = [run_round(str(root), r, out, configs, args.scale, args.seed) for r in range(args.rounds)]
    report = summarise(rounds)
    wall = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps({"scale": args.scale, "root": str(root), "rounds": rounds,
                                                  "wall_seconds": wall}, indent=2))
    print(report)
    print(f"\nWall time {wall:.0f} s for {args.rounds} round(s); results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
