"""Report of the ground-truth toy sweep: with vs without MEmeL, and how well phi finds the truth.

    python cli.py sweep --sweep configs/sweeps/toy_polysemantic.yaml
    python -m memel_lightning.analysis.toy_report --sweep_dir runs/sweeps/toy_polysemantic --out docs/toy_model

Reads the validation metrics that :class:`~memel_lightning.models.PolysemanticToy` logs
(ground-truth neuron counts, reconstruction loss, precision / recall / Spearman of
phi-based selection) from every run's TensorBoard events and writes ``toy_report.md``,
``toy_report.json`` and ``toy_training.png``. Precision and recall are also *pooled*
over all runs of a variant: ``sum TP / sum selected`` and ``sum TP / sum truly mono``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..research.events import read_scalars

TAGS = (
    "val_loss", "val_poly_neurons", "val_mono_neurons", "val_dead_neurons", "val_true_mono_ratio",
    "val_phi_mono_ratio", "val_phi_precision", "val_phi_recall", "val_phi_spearman", "val_phi_selected",
    "val_phi_true_positives", "memel/mono_ratio",
)


def collect(sweep_dir: str | Path, variants: Optional[Sequence[str]] = None) -> dict[str, dict[str, dict[str, list]]]:
    """``{variant: {seed_dir: {tag: [(step, value), ...]}}}`` for the finished runs."""
    root = Path(sweep_dir)
    names = variants or sorted(p.name for p in root.iterdir() if p.is_dir())
    out: dict[str, dict[str, dict[str, list]]] = {}
    for name in names:
        runs = sorted(p.parent for p in (root / name).glob("seed_*/done.json"))
        if runs:
            out[name] = {r.name: {t: read_scalars(r, t) for t in TAGS} for r in runs}
    if not out:
        raise FileNotFoundError(f"no finished runs (seed_*/done.json) under {root}")
    return out


def _last(curve: list, step: Optional[int] = None) -> float:
    """The last value of ``curve``; with ``step``, only if it was logged at that step
    (a metric the model skipped at the last validation, e.g. a NaN recall, counts as NaN)."""
    if not curve or (step is not None and curve[-1][0] != step):
        return math.nan
    return float(curve[-1][1])


def summarize(data: dict[str, dict[str, dict[str, list]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for variant, runs in data.items():
        row: dict[str, Any] = {"runs": len(runs)}
        final = {name: (r["val_loss"][-1][0] if r["val_loss"] else None) for name, r in runs.items()}
        for tag in TAGS:
            values = np.array([_last(r[tag], None if tag.startswith("memel/") else final[name])
                               for name, r in runs.items()], dtype=np.float64)
            finite = values[~np.isnan(values)]
            row[tag] = float(finite.mean()) if finite.size else math.nan
            row[tag + "_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        tp = sum(_last(r["val_phi_true_positives"], final[n]) for n, r in runs.items())
        sel = sum(_last(r["val_phi_selected"], final[n]) for n, r in runs.items())
        mono = sum(_last(r["val_mono_neurons"], final[n]) for n, r in runs.items())
        row["pooled_precision"] = tp / sel if sel else math.nan
        row["pooled_recall"] = tp / mono if mono else math.nan
        row["tp"], row["selected"], row["truly_mono"] = tp, sel, mono
        summary[variant] = row
    return summary


def _f(x: float, d: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{d}f}"


def _e(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.1e}"


def write(data: dict, summary: dict, out: Path, tau: float = 9.0) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| variant | runs | val recon MSE | poly neurons | mono neurons | dead neurons | phi precision | phi recall | Spearman(max phi, share) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, r in summary.items():
        lines.append(
            f"| `{v}` | {r['runs']} | {r['val_loss']:.2e} ± {_e(r['val_loss_std'])} | "
            f"{_f(r['val_poly_neurons'], 1)} | {_f(r['val_mono_neurons'], 1)} | {_f(r['val_dead_neurons'], 1)} | "
            f"{_f(r['pooled_precision'])} ({int(r['tp'])}/{int(r['selected'])}) | "
            f"{_f(r['pooled_recall'])} ({int(r['tp'])}/{int(r['truly_mono'])}) | {_f(r['val_phi_spearman'])} |"
        )
    all_tp = sum(r["tp"] for r in summary.values())
    all_sel = sum(r["selected"] for r in summary.values())
    all_mono = sum(r["truly_mono"] for r in summary.values())
    lines += [
        "",
        f"All runs pooled: precision {_f(all_tp / all_sel if all_sel else math.nan)} ({int(all_tp)}/{int(all_sel)}), "
        f"recall {_f(all_tp / all_mono if all_mono else math.nan)} ({int(all_tp)}/{int(all_mono)}) "
        f"of phi-based selection (max phi over the validation set > {tau}).",
        "",
    ]
    md = out / "toy_report.md"
    md.write_text("\n".join(lines))
    (out / "toy_report.json").write_text(json.dumps(summary, indent=1))

    fig, axes = plt.subplots(1, 5, figsize=(21, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("val_poly_neurons", "polysemantic neurons (truth)"), ("val_loss", "validation reconstruction MSE"),
              ("val_phi_precision", "precision of phi selection (max phi > tau)"),
              (("val_true_mono_ratio", "val_phi_mono_ratio"), "mono ratio: truth (solid) vs phi (dashed)"),
              ("memel/mono_ratio", "memel/mono_ratio (training batches)")]
    for ax, (tags, title) in zip(axes, panels):
        tags = tags if isinstance(tags, tuple) else (tags,)
        for k, tag in enumerate(tags):
            for i, (v, runs) in enumerate(data.items()):
                for j, r in enumerate(runs.values()):
                    if r[tag]:
                        s, y = zip(*r[tag])
                        ax.plot(s, y, color=colors[i % len(colors)], lw=1, alpha=0.8, ls="--" if k else "-",
                                label=v if j == 0 and k == 0 else None)
        tag = tags[0]
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        if tag == "val_loss":
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    png = out / "toy_training.png"
    fig.savefig(png, dpi=70)
    plt.close(fig)
    return {"md": md, "png": png}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m memel_lightning.analysis.toy_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep_dir", default="runs/sweeps/toy_polysemantic")
    parser.add_argument("--out", default=None, help="default: the sweep folder")
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--tau_report", type=float, default=9.0, help="as in the toy config (for the text only)")
    args = parser.parse_args(argv)
    data = collect(args.sweep_dir, args.variants)
    summary = summarize(data)
    paths = write(data, summary, Path(args.out or args.sweep_dir), args.tau_report)
    print(paths["md"].read_text())
    return summary


if __name__ == "__main__":
    main()
