"""Read TensorBoard event files back in tests."""
from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_events(log_dir: str | Path) -> EventAccumulator:
    """All scalars and histograms of the event files under ``log_dir``."""
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {log_dir}")
    acc = EventAccumulator(str(files[-1].parent), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def scalar_tags(log_dir: str | Path) -> set[str]:
    return set(read_events(log_dir).Tags()["scalars"])
