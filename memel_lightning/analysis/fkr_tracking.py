"""Does the labelled False Killing Rate track the true one? A table over toy runs.

    python -m memel_lightning.analysis.fkr_tracking runs/fkr_labelled/topk runs/fkr_labelled/topk_none ...

Every argument is a variant: a folder whose sub-folders are TensorBoard runs (one per
seed) of :class:`~memel_lightning.models.PolysemanticToy` trained with a MEmeL callback
and feature labels, which log at the same steps ``memel/fkr`` (the labelled FKR of
L2E's Eq. 4), ``memel/kill_concentration`` and ``train_true_fkr`` (the share of the
step's kills on neurons that are not truly monosemantic, from the known features).
Per variant: the mean of each over the logged steps (then over runs, ± the std over
runs), the value at the last logged step, and the Pearson correlation of the labelled
FKR with the true rate over all logged steps of all runs (``corr``). The last line
correlates the variants' mean rates (across settings).

``--ideal`` adds the labelled FKR of an *ideal* monosemantic network on the toy's data
(:func:`ideal_network_fkr`: one neuron per feature, ``h = x``, so the true false-kill
rate is 0), split by why a kill counts as false: the labels' floor.

    python -m memel_lightning.analysis.fkr_tracking --ideal
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

TAGS = ("memel/fkr", "train_true_fkr", "memel/kill_concentration")


def read_scalars(run_dir: str | Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of scalar ``tag`` in the TensorBoard events under ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[int, float] = {}
    for events_dir in sorted({p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update((e.step, float(e.value)) for e in acc.Scalars(tag))
    return out


def paired(run_dir: str | Path) -> np.ndarray:
    """``(steps, 3)``: labelled FKR, true false-kill rate, kill concentration at the steps
    logging all three."""
    series = [read_scalars(run_dir, tag) for tag in TAGS]
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return np.array([[s[k] for s in series] for k in steps], dtype=np.float64).reshape(-1, 3)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or not np.ptp(a) or not np.ptp(b):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summarize(variant_dir: str | Path) -> dict[str, float]:
    runs = [p for p in sorted(Path(variant_dir).iterdir()) if p.is_dir()]
    data = [d for d in (paired(r) for r in runs) if len(d)]
    if not data:
        raise FileNotFoundError(f"no run under {variant_dir} logged {', '.join(TAGS)} at the same steps")
    mean = np.array([d.mean(0) for d in data])
    final = np.array([d[-1] for d in data])
    pooled = np.concatenate(data)
    std = (lambda col: float(mean[:, col].std(ddof=1))) if len(data) > 1 else (lambda col: float("nan"))
    return {
        "runs": len(data), "steps": int(np.mean([len(d) for d in data])),
        "fkr_mean": float(mean[:, 0].mean()), "fkr_std": std(0),
        "true_mean": float(mean[:, 1].mean()), "true_std": std(1),
        "kc_mean": float(mean[:, 2].mean()),
        "fkr_final": float(final[:, 0].mean()), "true_final": float(final[:, 1].mean()),
        "corr": _corr(pooled[:, 0], pooled[:, 1]), "corr_kc": _corr(pooled[:, 2], pooled[:, 1]),
    }


def table(variant_dirs: Sequence[str | Path]) -> str:
    lines = [
        "| variant | runs | logged steps | labelled FKR mean | true mean | labelled FKR final | true final "
        "| corr(labelled FKR, true) | kill conc. mean | corr(kill conc., true) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [summarize(v) for v in variant_dirs]
    for v, s in zip(variant_dirs, rows):
        lines.append(
            f"| `{Path(v).name}` | {s['runs']} | {s['steps']} | {s['fkr_mean']:.3f} ± {s['fkr_std']:.3f} "
            f"| {s['true_mean']:.3f} ± {s['true_std']:.3f} | {s['fkr_final']:.3f} | {s['true_final']:.3f} "
            f"| {s['corr']:.2f} | {s['kc_mean']:.3f} | {s['corr_kc']:.2f} |"
        )
    across = _corr(np.array([s["fkr_mean"] for s in rows]), np.array([s["true_mean"] for s in rows]))
    lines.append("")
    lines.append(f"Across the {len(rows)} variants: corr(mean labelled FKR, mean true rate) = {across:.2f}")
    return "\n".join(lines)


def ideal_network_fkr(
    selector: str = "moving_threshold", steps: int = 300, n_features: int = 20, p_active: float = 0.05,
    batch_size: int = 256, target_ratio: float = 0.02, seed: int = 0,
) -> dict[str, float]:
    """Labelled FKR of ``h = x`` (neuron ``j`` = feature ``j``: every neuron truly
    monosemantic) on the toy's data with its labels (the dominant feature, ``n_features``
    when none is active), over the last two thirds of ``steps`` batches.

    ``selector``: ``"top1"`` (per sample) or ``"moving_threshold"`` (here: the exact
    ``(1 - target_ratio)`` quantile of the batch's phi, the threshold's fixed point).
    Returns the FKR and the shares of kills that are false because the sample has no
    active feature (``no_feature``), has the neuron's feature active but another one
    larger (``not_dominant``), or lacks the neuron's feature while having others
    (``feature_absent``)."""
    import torch

    from ..data.toy_polysemantic import dominant_feature, sparse_features
    from ..inhibition.feature_fkr import FeatureFKR
    from ..inhibition.moments import RunningMoments

    if selector not in ("top1", "moving_threshold"):
        raise ValueError(f"selector must be 'top1' or 'moving_threshold', got {selector!r}")
    g = torch.Generator().manual_seed(seed)
    moments, feature = RunningMoments(10), FeatureFKR(10)
    totals = dict(false=0.0, kills=0.0, no_feature=0.0, not_dominant=0.0, feature_absent=0.0)
    for step in range(steps):
        x = sparse_features(batch_size, n_features, p_active, g)
        labels = dominant_feature(x)
        moments.update(x)
        phi = (x - moments.mean) ** 2 / (moments.var + 0.01 * moments.var.mean())
        if selector == "top1":
            sel = torch.zeros_like(phi, dtype=torch.bool).scatter_(1, phi.argmax(1, keepdim=True), True)
        else:
            sel = phi > torch.quantile(phi.flatten(), 1 - target_ratio)
        l_star, known = feature.feature()
        false, kills = feature(phi, sel, labels)
        if step < steps // 3:
            continue
        wrong = sel & known[None, :] & (labels[:, None] != l_star[None, :])
        none = (labels == n_features)[:, None]
        own = x > 0  # neuron j's own feature j active in the sample
        totals["false"] += float(false)
        totals["kills"] += float(kills)
        totals["no_feature"] += float((wrong & none).sum())
        totals["not_dominant"] += float((wrong & ~none & own).sum())
        totals["feature_absent"] += float((wrong & ~none & ~own).sum())
    k = max(totals.pop("kills"), 1.0)
    return {"fkr": totals.pop("false") / k, **{name: v / k for name, v in totals.items()}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help="folders of toy runs (one sub-folder per seed)")
    parser.add_argument("--ideal", action="store_true", help="also the labelled FKR of an ideal monosemantic network")
    args = parser.parse_args(argv)
    if args.variants:
        print(table(args.variants))
    if args.ideal:
        print("\n| ideal network (h = x), selector | labelled FKR | no active feature | feature not dominant "
              "| feature absent |\n|---|---|---|---|---|")
        for selector in ("top1", "moving_threshold"):
            r = ideal_network_fkr(selector)
            print(f"| `{selector}` | {r['fkr']:.3f} | {r['no_feature']:.3f} | {r['not_dominant']:.3f} "
                  f"| {r['feature_absent']:.3f} |")


if __name__ == "__main__":
    main()
