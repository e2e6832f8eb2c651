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
import base64
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
# Deep querySelectorAll through TensorBoard's (Polymer) shadow roots.
DEEP = ("(sel => { const out = []; const walk = r => { r.querySelectorAll(sel).forEach(e => out.push(e)); "
        "r.querySelectorAll('*').forEach(e => e.shadowRoot && walk(e.shadowRoot)); }; walk(document); return out; })")
# tab -> (URL fragment, viewport WIDTH, HEIGHT in CSS pixels, device scale, script run once the tab
# has loaded). Custom Scalars: smoothing 0 (URL) and outliers not ignored (set in localStorage
# before, see main): TensorBoard's defaults bend and clip sparse MEmeL curves; the mono_ratio
# chart's "Matches" list (its legend) opened. Images: at their actual size.
TABS = {
    "custom_scalars": ("#custom_scalars&_smoothingWeight=0", 1100, 900, 2,
                       DEEP + "('tf-custom-scalar-multi-line-chart-card').slice(0, 1)"
                       ".forEach(c => c._toggleMatchesOpen())"),
    "images": ("#images", 1720, 960, 1, DEEP + "('tf-image-dashboard').forEach(d => d.set('_actualSize', true))"),
    "hparams": ("#hparams", 2300, 330, 1, ""),
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
        browser = None
        try:
            wait_for_data(port)
            browser = Browser(args.chromium, Path(tmp) / "chromium")
            url = f"http://127.0.0.1:{port}/"
            browser.open(url, 1100, 900, 1)
            browser.run("localStorage.setItem('_ignoreYOutliers', 'false')")  # read by the Custom Scalars tab
            for name, (fragment, width, height, scale, script) in TABS.items():
                path = args.out / f"{name}.png"
                browser.open(url + fragment, width, height, scale)
                if script:
                    browser.run(script)
                    time.sleep(3)
                path.write_bytes(browser.screenshot())
                shrink(path)
                shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                print(f"{shown}: {path.stat().st_size // 1000} KB")
        finally:
            if browser is not None:
                browser.close()
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


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe
    (``--remote-debugging-pipe``: commands in on fd 3, replies out on fd 4, each a JSON
    message ended by a NUL byte), so no extra package is needed."""

    def __init__(self, chromium: str, profile: Path) -> None:
        cmd_read, self._cmd_write = os.pipe()
        self._out_read, out_write = os.pipe()

        def child_fds() -> None:
            os.dup2(cmd_read, 3)
            os.dup2(out_write, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(out_write)
        self._buffer, self._id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        while True:  # replies of other ids and events are skipped
            while b"\0" not in self._buffer:
                chunk = os.read(self._out_read, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str, width: int, height: int, scale: int, settle: float = 8.0) -> None:
        """Load ``url`` in a ``width`` x ``height`` viewport; wait ``settle`` s for its data requests."""
        self.call("Emulation.setDeviceMetricsOverride", self.session, width=width, height=height,
                  deviceScaleFactor=scale, mobile=False)
        self.call("Page.navigate", self.session, url=url)
        time.sleep(settle)

    def run(self, script: str) -> None:
        result = self.call("Runtime.evaluate", self.session, expression=script)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed in the page: {result['exceptionDetails'].get('text')}")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", self.session, format="png")["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        self.proc.wait(timeout=30)


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
