"""Crash-safe checkpoint files on local disks."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each local checkpoint beside its target, fsync it, then ``os.replace`` it.

    Lightning 2.6's ``TorchCheckpointIO`` already writes through a temporary file, but
    that file is created by ``tempfile.mkstemp()`` in ``$TMPDIR`` and moved with
    ``shutil.move``: a rename (atomic) only when ``$TMPDIR`` and the checkpoint share a
    filesystem, otherwise a copy into the final name, which an interrupted run leaves
    truncated (e.g. ``last.ckpt`` over a shared disk while ``/tmp`` is local). Nothing is
    fsynced either. Here the temporary file is ``.<name>.tmp-<pid>`` in the target's
    directory, so the final name always holds either the old or the new checkpoint.
    Remote paths (``s3://`` ...) use Lightning's own saving.

    Example (YAML for LightningCLI)::

        trainer:
          plugins:
            - class_path: memel_lightning.checkpoint_io.AtomicCheckpointIO
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        text = str(path)
        if "://" in text and not text.startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for local paths")
        target = Path(text.removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            fd = os.open(target.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
