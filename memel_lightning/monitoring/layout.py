"""The Custom Scalars layout: one multi-line chart per MEmeL metric, lines = taps."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

# Per-tap metrics charted across taps, in display order (docs/method.md §6).
MEMEL_CHARTS = ("mono_ratio", "selected_frac", "fkr", "kill_concentration", "phi_max", "phi_mean", "reg_loss")
# Metrics that also have an all-taps aggregate (memel/<metric>), drawn as one more line.
AGGREGATED = ("mono_ratio", "kill_concentration", "fkr")
MEMEL_CATEGORY = "MEmeL"
TASK_CATEGORY = "task (validation)"


def memel_layout(
    labels: Sequence[str], metrics: Iterable[str] = MEMEL_CHARTS, task_tags: Iterable[str] = (), prefix: str = "memel"
) -> dict[str, dict[str, list]]:
    """The layout for ``SummaryWriter.add_custom_scalars``:
    ``{category: {chart title: ["Multiline", [tag regex, ...]]}}``.

    Category "MEmeL" has one chart per metric in ``metrics`` (in :data:`MEMEL_CHARTS`
    order) whose lines are the taps' ``<prefix>/<label>/<metric>`` tags plus, for
    :data:`AGGREGATED` metrics, the all-taps ``<prefix>/<metric>``. The task category
    has one chart per validation tag (``val...``), with its training counterpart
    (``train_loss`` next to ``val_loss``) when that is logged too.

    Example:
        >>> layout = memel_layout(["blocks.0", "blocks.1"], ["mono_ratio"], ["val_acc", "train_loss", "val_loss"])
        >>> layout["MEmeL"]["mono_ratio"]
        ['Multiline', ['^memel/blocks\\\\.0/mono_ratio$', '^memel/blocks\\\\.1/mono_ratio$', '^memel/mono_ratio$']]
        >>> layout["task (validation)"]["loss"]
        ['Multiline', ['^val_loss$', '^train_loss$']]
    """
    wanted = set(metrics)
    unknown = sorted(wanted - set(MEMEL_CHARTS))
    if unknown:
        raise ValueError(f"no MEmeL chart for metrics {unknown}; charted metrics are {list(MEMEL_CHARTS)}")
    charts: dict[str, list] = {}
    for metric in (m for m in MEMEL_CHARTS if m in wanted):
        tags = [_exact(f"{prefix}/{label}/{metric}") for label in labels]
        if metric in AGGREGATED:
            tags.append(_exact(f"{prefix}/{metric}"))
        charts[metric] = ["Multiline", tags]
    layout = {MEMEL_CATEGORY: charts}
    task = _task_charts(list(task_tags))
    if task:
        layout[TASK_CATEGORY] = task
    return layout


def _task_charts(tags: list[str]) -> dict[str, list]:
    charts: dict[str, list] = {}
    for tag in tags:
        if not tag.startswith("val"):
            continue
        name = tag[len("val"):].lstrip("_/") or tag
        lines = [_exact(tag)]
        for train in (f"train_{name}", f"train/{name}"):
            if train in tags:
                lines.append(_exact(train))
        charts[name] = ["Multiline", lines]
    return charts


def _exact(tag: str) -> str:
    return f"^{re.escape(tag)}$"
