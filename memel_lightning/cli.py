"""LightningCLI entry point: ``python cli.py fit --config configs/<name>.yaml``."""
from __future__ import annotations

from typing import Any, Optional

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from .checkpoint_io import AtomicCheckpointIO


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


def main(args: Optional[list[str]] = None, run: bool = True) -> MEmeLCLI:
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
