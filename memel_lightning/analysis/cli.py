"""``python cli.py probe --config RUN/config.yaml --ckpt_path CKPT [--ablate TAP:NEURON ...]``.

Builds the model and data module named in the config (the ``config.yaml`` LightningCLI
saved in the run folder, or the config the run was started with), loads the
checkpoint's weights and MEmeL statistics, and writes ``probe.md``, ``probe.json`` and
``phi_hist.png`` (and the ablation tables) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml


def _memel_settings(config: dict) -> dict[str, Any]:
    """The MEmeL keyword arguments of the first MEmeLCallback in the config (or {})."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    for entry in callbacks:
        if isinstance(entry, dict) and str(entry.get("class_path", "")).endswith("MEmeLCallback"):
            return dict((entry.get("init_args") or {}).get("memel") or {})
    return {}


def build_from_config(config_path: str | Path) -> tuple[Any, Any, dict]:
    """Instantiate ``model`` and ``data`` of a LightningCLI config (subclass mode)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("model", "data"):
        if key not in raw:
            raise KeyError(f"config {path} has no '{key}' section (class_path/init_args)")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    cfg = parser.parse_object({"model": raw["model"], "data": raw["data"]})
    init = parser.instantiate_classes(cfg)
    return init.model, init.data, raw


def probe_main(argv: Optional[Sequence[str]] = None) -> dict:
    from .ablation import ablation_probe, format_ablation
    from .probes import load_tap_statistics, probe_neurons, write_probe_report

    parser = argparse.ArgumentParser(
        prog="cli.py probe",
        description="Neuron probes on a trained checkpoint: per-tap mono ratio on the validation set, phi "
        "histogram, top neurons with the labels that fire them, and optional ablations.",
    )
    parser.add_argument("--config", required=True, help="the run's config (e.g. RUN/config.yaml)")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint saved with the MEmeLCallback")
    parser.add_argument("--out", default=None, help="output folder (default: <ckpt folder>/probe)")
    parser.add_argument("--taps", nargs="+", default=None, help="taps to probe (default: all in the checkpoint)")
    parser.add_argument("--top", type=int, default=10, help="number of top neurons per tap")
    parser.add_argument("--tau_report", type=float, default=None, help="default: the config's, else 9")
    parser.add_argument("--eps", type=float, default=None, help="default: the config's, else 0.01")
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--ablate", nargs="+", default=[], metavar="TAP:NEURON",
                        help="ablate these neurons (set to their running mean) and report the loss increase per label")
    parser.add_argument("--ablate_top", type=int, default=0,
                        help="also ablate the N top neurons (by max phi) of every probed tap")
    args = parser.parse_args(argv)

    model, data, raw = build_from_config(args.config)
    settings = _memel_settings(raw)
    eps = args.eps if args.eps is not None else float(settings.get("eps", 0.01))
    tau = args.tau_report if args.tau_report is not None else float(settings.get("tau_report", 9.0))
    reduce_dims = tuple(settings.get("reduce_dims", ()) or ())
    variable = bool(settings.get("variable_shape", False))
    checkpoint = torch.load(args.ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    stats = load_tap_statistics(checkpoint)
    data.setup("validate")
    loader = data.val_dataloader()
    results = probe_neurons(model, loader, stats, taps=args.taps, eps=eps, tau_report=tau, reduce_dims=reduce_dims,
                            variable_shape=variable, top=args.top, max_batches=args.max_batches)
    out = Path(args.out or Path(args.ckpt_path).parent / "probe")
    paths = write_probe_report(results, out, tau)
    targets = []
    for item in args.ablate:
        tap, _, idx = item.rpartition(":")
        if not tap or not idx.isdigit():
            raise SystemExit(f"--ablate expects TAP:NEURON (a flat neuron index), got {item!r}")
        targets.append((tap, int(idx)))
    for tap, res in results.items():
        targets += [(tap, n.index) for n in res.top[: args.ablate_top]]
    ablations = []
    sections = []
    for tap, idx in targets:
        if tap not in stats:
            raise SystemExit(f"--ablate: no statistics for tap {tap!r}; the checkpoint has {sorted(stats)}")
        value = float(stats[tap].moments.mean[idx])
        rows = ablation_probe(model, loader, tap, idx, value, reduce_dims=reduce_dims, max_batches=args.max_batches)
        ablations.append({"tap": tap, "neuron": idx, "value": value,
                          "rows": [dict(r.__dict__, increase=r.increase) for r in rows]})
        sections.append(format_ablation(rows, tap, idx))
    if sections:
        (out / "ablation.md").write_text("\n\n".join(sections) + "\n")
        (out / "ablation.json").write_text(json.dumps(ablations, indent=1))
        with open(paths["md"], "a") as f:
            f.write("\n## Ablations\n\n" + "\n\n".join(sections) + "\n")
    print(paths["md"].read_text())
    return {"results": results, "ablations": ablations, "out": out}
