"""``python cli.py probe --ckpt_path CKPT [--config CONFIG] [--ablate TAP:NEURON ...]``.

Builds the model and data module of the run (from the config the checkpoint carries, or
``--config``, which must then be the run's), loads the checkpoint's weights and MEmeL
statistics, and writes ``probe.md``, ``probe.json`` and ``phi_hist.png`` (and the ablation
tables) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import yaml


RUN_ONLY_KEYS = ("ckpt_path", "weights_only", "config")
CPU_TRAINER = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
               "--trainer.precision=32-true", "--trainer.logger=false"]


def _memel_settings(cli: Any) -> dict[str, Any]:
    """The MEmeL settings of the first MEmeLCallback the run had (or {})."""
    from ..callback import MEmeLCallback

    for cb in cli.trainer.callbacks:
        if isinstance(cb, MEmeLCallback):
            cfg = getattr(cb, "memel", None)
            if cfg is not None and hasattr(cfg, "as_dict"):
                return cfg.as_dict()
            return dict(getattr(cb, "memel_kwargs", {}) or {})
    return {}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key != "__path__":
                out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _recipe(config: Any) -> dict[str, Any]:
    """What must agree between a checkpoint and a config: the model and the MEmeL settings
    (the data may differ: probing a run on other data, or data moved, is legitimate)."""
    flat = _flat(config.get("model"), "model.")
    callbacks = config.get("trainer", {}).get("callbacks") or []
    for entry in callbacks if isinstance(callbacks, list) else [callbacks]:
        if str(getattr(entry, "class_path", "")).endswith("MEmeLCallback"):
            flat.update(_flat(entry.get("init_args", {}).get("memel"), "memel."))
    return flat


def build_from_config(
    config: str | Path, extra: Sequence[str] = (), *, cli_main: Callable[..., Any]
) -> tuple[Any, Any, Any]:
    """Instantiate a run's config as ``cli.py fit`` would (overlays, ``--memel.*`` and all)
    on one CPU, without training: returns ``(model, data, cli)``. ``config`` is a file or
    YAML text (the config a checkpoint carries); ``cli_main`` is the command line's entry point
    (``memel_lightning.cli.main``), handed in so that the analysis layer never imports the CLI."""
    main = cli_main
    text = str(config)
    if "\n" not in text:
        if not Path(text).is_file():
            raise FileNotFoundError(f"config {config} does not exist")
        text = Path(text).read_text()
    data = yaml.safe_load(text) or {}
    if "extends" in data:  # an overlay from configs/: the CLI resolves it relative to its file
        text = str(config)
    else:  # a saved run config: drop the subcommand-only keys ``fit`` wrote
        for key in RUN_ONLY_KEYS:
            data.pop(key, None)
        text = yaml.safe_dump(data, sort_keys=False)
    cli = main(["--config", text, *CPU_TRAINER, *extra], run=False)
    return cli.model, cli.datamodule, cli


def check_pairing(cli: Any, checkpoint: dict, config: str, ckpt_path: str) -> None:
    """Refuse a config that is not the one the checkpoint was trained with."""
    from ..run_record import CHECKPOINT_KEY

    text = checkpoint.get(CHECKPOINT_KEY)
    if text is None:
        return
    data = yaml.safe_load(text) or {}
    for key in RUN_ONLY_KEYS:
        data.pop(key, None)
    saved = _recipe(cli.parser.parse_object(data))
    given = _recipe(cli.config)
    differ = sorted(k for k in set(saved) | set(given) if saved.get(k) != given.get(k))
    if differ:
        shown = ", ".join(f"{k}: {given.get(k)!r} (checkpoint: {saved.get(k)!r})" for k in differ[:4])
        raise SystemExit(
            f"error: {config} is not the config {ckpt_path} was trained with ({shown}"
            f"{', ...' if len(differ) > 4 else ''}); omit --config to use the checkpoint's own"
        )


def probe_main(argv: Optional[Sequence[str]] = None, *, cli_main: Callable[..., Any]) -> dict:
    """``cli.py probe``: ``cli_main`` is ``memel_lightning.cli.main`` (see :func:`build_from_config`)."""
    from .ablation import ablation_probe, format_ablation
    from .probes import load_tap_statistics, probe_neurons, write_probe_report

    parser = argparse.ArgumentParser(
        prog="cli.py probe",
        description="Neuron probes on a trained checkpoint: per-tap mono ratio on the validation set, phi "
        "histogram, top neurons with the labels that fire them, and optional ablations.",
    )
    parser.add_argument("--config", default=None,
                        help="the run's config (default: the one saved in the checkpoint; e.g. RUN/config.yaml)")
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

    from ..run_record import CHECKPOINT_KEY

    if not Path(args.ckpt_path).is_file():
        raise SystemExit(f"error: checkpoint {args.ckpt_path} does not exist")
    checkpoint = torch.load(args.ckpt_path, map_location="cpu", weights_only=False)
    config = args.config or checkpoint.get(CHECKPOINT_KEY)
    if config is None:
        raise SystemExit(f"error: {args.ckpt_path} carries no config (saved by an older version): pass --config "
                         "RUN/config.yaml of the run that wrote it")
    model, data, cli = build_from_config(config, cli_main=cli_main)
    if args.config is not None:
        check_pairing(cli, checkpoint, args.config, args.ckpt_path)
    settings = _memel_settings(cli)
    eps = args.eps if args.eps is not None else float(settings.get("eps", 0.01))
    tau = args.tau_report if args.tau_report is not None else float(settings.get("tau_report", 9.0))
    reduce_dims = tuple(settings.get("reduce_dims", ()) or ())
    variable = bool(settings.get("variable_shape", False))
    bind = getattr(data, "bind", None)
    if callable(bind):  # e.g. GLUE: the data's task builds the model's network and picks the tokenizer
        bind(model)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
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
