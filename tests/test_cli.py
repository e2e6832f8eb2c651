"""The LightningCLI entry point."""
import subprocess
import sys

import pytest

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


def _cli(*args, cwd=REPO):
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_a_bad_memel_setting_ends_in_one_line_printed_last():
    for args, pattern in ((["--memel.k", "0"], r"\bk\b.*(>= 1|>=1)"), (["--memel.delta", "nan"], r"memel\.delta")):
        out = _cli("fit", "--config", "configs/quickstart.yaml", *args, "--trainer.max_steps", "1")
        assert out.returncode == 2, out.stderr[-2000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and __import__("re").search(pattern, last), last
        assert "usage:" not in out.stderr and "Traceback" not in out.stderr and len(out.stderr.splitlines()) <= 3


@pytest.mark.slow  # a whole fit in a subprocess (~40 s on a loaded 2-core machine)
def test_a_run_prints_no_third_party_noise(tmp_path):
    out = _cli("fit", "--config", str(REPO / "configs/quickstart.yaml"), "--trainer.max_steps", "1",
               "--trainer.limit_val_batches", "1", f"--trainer.logger.init_args.save_dir={tmp_path}",
               "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for noise in ("💡 Tip", "litlogger", "litmodels", "LeafSpec", "pin_memory", "is_gradient_checkpointing"):
        assert noise not in text, noise


def test_interrupted_checkpoint_temporaries_are_cleaned(tmp_path):
    import os
    import socket

    stale = tmp_path / f".last.ckpt.tmp-{socket.gethostname()}-999999999"
    old_style = tmp_path / ".epoch=0.ckpt.tmp-999999998"
    live = tmp_path / f".last.ckpt.tmp-{socket.gethostname()}-{os.getppid()}"  # a running process
    other_host = tmp_path / ".last.ckpt.tmp-another-host-999999999"
    for p in (stale, old_style, live, other_host):
        p.write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint({"x": 1}, tmp_path / "last.ckpt")
    assert not stale.exists() and not old_style.exists()
    assert live.exists() and other_host.exists() and (tmp_path / "last.ckpt").is_file()
