"""LightningCLI entry point: ``python cli.py fit --config configs/<name>.yaml``."""
from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class MEmeLCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data.

    Models and data modules are named by ``class_path`` in the YAML (e.g.
    ``memel_lightning.models.DigitsClassifier``); the inhibition is a callback under
    ``trainer.callbacks`` (``memel_lightning.MEmeLCallback``).
    """


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
