"""kill_concentration (``memel/kill_concentration``, logged as ``memel/fkr`` before the
rename) against the true false-kill rate (``train_true_fkr``) on the toy.

    python -m memel_lightning.analysis.fkr_truth runs/fkr_truth/topk runs/fkr_truth/moving_threshold

Every argument is a variant: a folder whose sub-folders are runs of
:class:`~memel_lightning.models.PolysemanticToy` trained with a MEmeL callback (one
TensorBoard run per seed). For each run the two rates are paired at the steps where both
were logged (steps with kills); the table gives, per variant, the mean over the logged
steps and the value at the last one (both averaged over the runs, ± the std over runs),
the mean gap ``true - kill_concentration``, the Pearson correlation of the two over the steps (pooled),
and the dead neurons' share of the kills (part of the true rate).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from ..research.events import read_scalars


def paired(run_dir: str | Path) -> np.ndarray:
    """``(steps, 3)``: kill concentration, true false-kill rate, dead kill share at the steps
    logging all three (runs from before the rename: their ``memel/fkr`` tag is read)."""
    fkr = dict(read_scalars(run_dir, "memel/kill_concentration")) or dict(read_scalars(run_dir, "memel/fkr"))
    true = dict(read_scalars(run_dir, "train_true_fkr"))
    dead = dict(read_scalars(run_dir, "train_dead_kill_frac"))
    steps = sorted(set(fkr) & set(true) & set(dead))
    return np.array([[fkr[s], true[s], dead[s]] for s in steps], dtype=np.float64).reshape(-1, 3)


def summarize(variant_dir: str | Path) -> dict[str, float]:
    runs = [p for p in sorted(Path(variant_dir).iterdir()) if p.is_dir()]
    data = [d for d in (paired(r) for r in runs) if len(d)]
    if not data:
        raise FileNotFoundError(f"no run under {variant_dir} logged both memel/kill_concentration and train_true_fkr")
    mean = np.array([d.mean(0) for d in data])
    final = np.array([d[-1] for d in data])
    pooled = np.concatenate(data)
    corr = np.corrcoef(pooled[:, 0], pooled[:, 1])[0, 1] if np.ptp(pooled[:, 0]) and np.ptp(pooled[:, 1]) else np.nan
    return {
        "runs": len(data), "steps": int(np.mean([len(d) for d in data])),
        "kc_mean": mean[:, 0].mean(), "kc_mean_std": mean[:, 0].std(ddof=1) if len(data) > 1 else np.nan,
        "true_mean": mean[:, 1].mean(), "true_mean_std": mean[:, 1].std(ddof=1) if len(data) > 1 else np.nan,
        "gap_mean": (mean[:, 1] - mean[:, 0]).mean(),
        "kc_final": final[:, 0].mean(), "true_final": final[:, 1].mean(),
        "dead_mean": mean[:, 2].mean(), "corr": float(corr),
    }


def table(variant_dirs: Sequence[str | Path]) -> str:
    lines = [
        "| variant | runs | logged steps | kill conc. mean | true mean | gap (true - kill conc.) | kill conc. final | true final "
        "| dead share of kills | corr(kill conc., true) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variant_dirs:
        s = summarize(v)
        lines.append(
            f"| `{Path(v).name}` | {s['runs']} | {s['steps']} | {s['kc_mean']:.3f} ± {s['kc_mean_std']:.3f} "
            f"| {s['true_mean']:.3f} ± {s['true_mean_std']:.3f} | {s['gap_mean']:+.3f} | {s['kc_final']:.3f} "
            f"| {s['true_final']:.3f} | {s['dead_mean']:.3f} | {s['corr']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="folders of toy runs (one sub-folder per seed)")
    print(table(parser.parse_args(argv).variants))


if __name__ == "__main__":
    main()
