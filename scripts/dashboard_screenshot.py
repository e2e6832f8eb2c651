"""Screenshots of the TensorBoard dashboard of a real quickstart run (docs/monitoring.md).

Runs ``python cli.py fit --config configs/quickstart.yaml`` into a temporary directory
(or uses ``--logdir``), starts TensorBoard on 127.0.0.1 only, opens the Custom Scalars,
Images and HParams tabs in headless Chromium and saves small PNGs under docs/monitoring/.

    python scripts/dashboard_screenshot.py                     # full quickstart (~1-3 min on a CPU)
    python scripts/dashboard_screenshot.py --max-epochs 4      # shorter
    python scripts/dashboard_screenshot.py --logdir runs/quickstart   # an existing run

Needs Chromium (Debian: ``apt-get install -y chromium``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# tab -> (URL fragment, window WIDTH,HEIGHT in CSS pixels, device scale). Smoothing off:
# the default 0.6 bends sparse MEmeL curves (docs/monitoring.md). The Images tab draws
# images ~350 px wide, so it is taken at device scale 2 for a legible heatmap; the
# HParams table needs width for its settings and metric columns.
TABS = {
    "custom_scalars": ("#custom_scalars&_smoothingWeight=0", "1100,760", 2),
    "images": ("#images", "1100,640", 2),
    "hparams": ("#hparams", "2300,330", 1),
}
MAX_BYTES = 300_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, help="an existing run's directory (skips training)")
    parser.add_argument("--max-epochs", type=int, help="override the quickstart's trainer.max_epochs")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "monitoring")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.chromium:
        sys.exit("no chromium on PATH: apt-get install -y chromium (or pass --chromium PATH)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir or train(Path(tmp) / "runs", args.max_epochs)
        port = free_port()
        board = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", str(port), "--reload_interval", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_data(port)
            for name, (fragment, size, scale) in TABS.items():
                path = args.out / f"{name}.png"
                screenshot(args.chromium, f"http://127.0.0.1:{port}/{fragment}", path, size, scale, Path(tmp))
                shrink(path)
                print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {path.stat().st_size // 1000} KB")
        finally:
            board.terminate()
            board.wait(timeout=30)


def train(save_dir: Path, max_epochs: int | None) -> Path:
    cmd = [sys.executable, "cli.py", "fit", "--config", "configs/quickstart.yaml",
           f"--trainer.logger.init_args.save_dir={save_dir}", "--trainer.enable_progress_bar=false"]
    if max_epochs is not None:
        cmd.append(f"--trainer.max_epochs={max_epochs}")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return save_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_data(port: int, timeout: float = 120.0) -> None:
    """Until TensorBoard has loaded the run (its plugins report data)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5) as r:
                plugins = json.load(r)
            if all(plugins.get(p, {}).get("enabled") for p in ("custom_scalars", "images", "hparams")):
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"TensorBoard on port {port} showed no custom_scalars/images/hparams data in {timeout:.0f} s")


def screenshot(chromium: str, url: str, path: Path, size: str, scale: int, tmp: Path) -> None:
    subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={tmp / 'chromium'}", f"--window-size={size}", f"--force-device-scale-factor={scale}", "--virtual-time-budget=20000",
         f"--screenshot={path}", url],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180,
    )


def shrink(path: Path) -> None:
    """Palette PNG (256 colours: charts have few), then smaller until under MAX_BYTES."""
    image = Image.open(path).convert("RGB")
    while True:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            return
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.Resampling.LANCZOS)


if __name__ == "__main__":
    main()
