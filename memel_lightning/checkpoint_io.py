"""Crash-safe checkpoint files on local disks."""
from __future__ import annotations

import os
import re
import socket
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
    directory, so the final name always holds either the old or the new checkpoint. Temporary
    files of writers killed mid-write (``.<name>.tmp-<host>-<pid>`` of a process that no longer
    runs on this host) are removed at the next save into that directory.
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
        remove_stale_temporaries(target.parent)
        tmp = target.parent / f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}"
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


_TMP = re.compile(r"^\..+\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete this host's checkpoint temporaries whose writing process is gone; returns them.

    Example:
        >>> import tempfile; d = Path(tempfile.mkdtemp())
        >>> _ = (d / f".last.ckpt.tmp-{socket.gethostname()}-999999999").write_bytes(b"")
        >>> [p.name.startswith(".last.ckpt") for p in remove_stale_temporaries(d)]
        [True]
    """
    removed = []
    host = socket.gethostname()
    for path in folder.glob(".*.tmp-*"):
        match = _TMP.match(path.name)
        if match is None or (match["host"] not in (None, host)):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
