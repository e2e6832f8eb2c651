"""The LightningCLI entry point."""
import subprocess
import sys

from memel_lightning.checkpoint_io import AtomicCheckpointIO
from memel_lightning.cli import main

from conftest import REPO


def test_help_lists_the_lightning_subcommands():
    out = subprocess.run([sys.executable, "cli.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True)
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


def test_checkpoints_are_atomic_by_default(tmp_path):
    cli = main(["--config", str(REPO / "configs/toy_memel.yaml"), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
