"""LightningCLI entry point: ``python cli.py fit --config configs/<name>.yaml``.

Besides LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, two research
commands are dispatched before LightningCLI parses anything:

- ``python cli.py sweep --config base.yaml --sweep configs/sweeps/<x>.yaml`` runs a
  comparison / MEmeL-Tune sweep (:mod:`memel_lightning.sweep`);
- ``python cli.py probe --config run/config.yaml --ckpt_path run/checkpoints/x.ckpt``
  probes a trained checkpoint's neurons (:mod:`memel_lightning.analysis`).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from .checkpoint_io import AtomicCheckpointIO

RESEARCH_HELP = (
    "Research commands (own options, see `<command> --help`): "
    "sweep (comparison and MEmeL-Tune sweeps: --config BASE --sweep SWEEP), "
    "probe (neuron probes on a checkpoint: --config CONFIG --ckpt_path CKPT)."
)


class MEmeLCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data.

    Models and data modules are named by ``class_path`` in the YAML (e.g.
    ``memel_lightning.models.DigitsClassifier``); the inhibition is a callback under
    ``trainer.callbacks`` (``memel_lightning.MEmeLCallback``). Checkpoints are written
    with :class:`~memel_lightning.checkpoint_io.AtomicCheckpointIO` unless the config
    names another ``CheckpointIO`` plugin, so a checkpoint on disk is never half-written.
    """

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config["trainer"].get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["trainer"]["plugins"] = plugins + [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self.parser.epilog = RESEARCH_HELP


def _sweep(argv: Sequence[str]) -> Any:
    from .sweep import sweep_main

    return sweep_main(argv)


def _probe(argv: Sequence[str]) -> Any:
    from .analysis.cli import probe_main

    return probe_main(argv)


RESEARCH_COMMANDS: dict[str, Callable[[Sequence[str]], Any]] = {"sweep": _sweep, "probe": _probe}


def main(args: Optional[list[str]] = None, run: bool = True) -> Any:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in RESEARCH_COMMANDS:
        return RESEARCH_COMMANDS[argv[0]](argv[1:])
    return MEmeLCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
