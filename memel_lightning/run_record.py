"""A run's record: its config next to its logs and inside every checkpoint, never overwritten."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

CHECKPOINT_KEY = "memel_cli_config"  # the run's LightningCLI config (YAML text) in each checkpoint


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's config saving, made safe for re-runs into the same folder.

    - ``fit`` writes ``config.yaml`` into the run's log folder; if that file already holds a
      *different* config (another run logged into the same folder: a fixed logger
      ``version``, no logger...), this run's goes to ``config_1.yaml``, ``config_2.yaml``...
      and a line says so. Other subcommands write nothing (no new ``version_N`` per predict).
    - Every checkpoint carries the config it was trained with (key ``memel_cli_config``), so
      ``cli.py probe --ckpt_path X.ckpt`` needs no ``--config`` and refuses a config that is
      not the checkpoint's.
    - A ``fit`` that fails before its first optimiser step removes the ``version_N`` folder
      it created, if it holds no checkpoint.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_path: Optional[Path] = None
        self._text: Optional[str] = None
        self._log_dir: Optional[Path] = None
        self._started = time.time()  # the CLI builds this callback before the trainer touches any folder

    def text(self) -> str:
        if self._text is None:
            self._text = self.parser.dump(self.config, skip_none=False)
        return self._text

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit":
            return
        log_dir = trainer.log_dir
        if log_dir is not None and trainer.is_global_zero and "://" not in str(log_dir):
            folder = self._log_dir = Path(log_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self.config_path = free_config_path(folder, self.config_filename, self.text())
            if self.config_path.name != self.config_filename:
                rank_zero_info(
                    f"{folder / self.config_filename} holds another run's config: this run's is {self.config_path}"
                )
            tmp = self.config_path.with_name(f".{self.config_path.name}.tmp-{os.getpid()}")
            tmp.write_text(self.text())
            os.replace(tmp, self.config_path)
        self.already_saved = True

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.text()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.global_step > 0 or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        # the setup hook may not have run (a data module that fails in setup): ask the trainer
        log_dir = self._log_dir or (trainer.log_dir if trainer.loggers else None)
        if log_dir is None or "://" in str(log_dir):
            return
        folder = Path(log_dir)
        if not (re.fullmatch(r"version_\d+", folder.name) and folder.is_dir()):
            return
        entries = [folder, *folder.rglob("*")]
        # only a folder this run made and filled: no checkpoint, nothing older than the run
        if not any(p.suffix == ".ckpt" for p in entries) and all(p.stat().st_mtime >= self._started - 1 for p in entries):
            shutil.rmtree(folder, ignore_errors=True)


def free_config_path(folder: Path, name: str, text: str) -> Path:
    """``folder/name`` if absent or holding ``text``, else the first free ``<stem>_<n><suffix>``.

    Example:
        >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "config.yaml").write_text("a")
        >>> free_config_path(d, "config.yaml", "a").name, free_config_path(d, "config.yaml", "b").name
        ('config.yaml', 'config_1.yaml')
    """
    path = folder / name
    n = 0
    while path.exists() and path.read_text() != text:
        n += 1
        path = folder / f"{Path(name).stem}_{n}{Path(name).suffix}"
    return path
