"""HParams: the run's MEmeL settings next to its final metrics, written at the end of fit."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

Value = Union[int, float, str, bool]

# The MEmeL settings shown as HParams columns (docs/method.md §3-§5), when the config has them.
MEMEL_SETTINGS = (
    "selector", "k", "tau", "target_ratio", "strategy", "delta", "reg_lambda", "reg_form",
    "forget_steps", "late_start", "tau_report",
)


def memel_hparams(config: Any, labels: Sequence[str]) -> dict[str, Value]:
    """``{"memel/<setting>": value}`` for :data:`MEMEL_SETTINGS` plus ``memel/taps``
    (the tap labels, comma separated) and ``memel/n_taps``. ``config``: an
    ``MEmeLConfig`` (any dataclass) or a mapping of its fields.

    Example:
        >>> memel_hparams({"selector": "topk", "k": 1, "tau": None}, ["blocks.0", "blocks.1"])
        {'memel/selector': 'topk', 'memel/k': 1, 'memel/tau': 'None', 'memel/taps': 'blocks.0,blocks.1', 'memel/n_taps': 2}
    """
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    out = {f"memel/{name}": _value(fields[name]) for name in MEMEL_SETTINGS if name in fields}
    out["memel/taps"] = ",".join(labels)
    out["memel/n_taps"] = len(labels)
    return out


def flat_hparams(params: Optional[Mapping[str, Any]], prefix: str = "") -> dict[str, Value]:
    """Nested hyperparameters as ``{"a/b": scalar}`` (lists and other objects as text).

    Example:
        >>> flat_hparams({"lr": 0.01, "model_kwargs": {"depths": [2, 2]}})
        {'lr': 0.01, 'model_kwargs/depths': '[2, 2]'}
    """
    out: dict[str, Value] = {}
    for key, value in (params or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}/"))
        else:
            out[name] = _value(value)
    return out


def final_metric_tags(logged: Iterable[str], labels: Sequence[str], prefix: str = "memel") -> list[str]:
    """The logged tags HParams shows as the run's final metrics (their last value):
    the task's validation metrics (``val...``), the overall and per-tap ``mono_ratio``,
    ``fkr`` and ``kill_concentration``.

    Example:
        >>> final_metric_tags(["val_acc", "train_loss", "memel/mono_ratio", "memel/b0/mono_ratio"], ["b0"])
        ['val_acc', 'memel/mono_ratio', 'memel/b0/mono_ratio']
    """
    logged = set(logged)
    wanted = sorted(t for t in logged if t.startswith("val"))
    wanted += [f"{prefix}/mono_ratio", f"{prefix}/fkr", f"{prefix}/kill_concentration"]
    wanted += [f"{prefix}/{label}/mono_ratio" for label in labels]
    return [t for t in wanted if t in logged]


def write_hparams(writer: Any, hparams: Mapping[str, Value], metric_tags: Sequence[str], step: int = 0) -> None:
    """Write the HParams plugin's experiment, session start and end records into
    ``writer``'s (a ``torch.utils.tensorboard.SummaryWriter``) own run directory.

    The metrics are references: TensorBoard shows each tag's last logged value in
    that run, so nothing is logged twice and no placeholder value is needed.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    if not metric_tags:
        raise ValueError("write_hparams needs at least one metric tag (HParams shows nothing without one)")
    records = hparams_summaries(dict(hparams), {tag: 0.0 for tag in metric_tags})  # values unused: tags only
    file_writer = writer._get_file_writer()  # as Lightning's TensorBoardLogger does: the run itself
    for record in records:
        file_writer.add_summary(record, step)
    writer.flush()


def _value(value: Any) -> Value:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
