"""HParams: the run's MEmeL settings next to its final metrics, written at the end of fit."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

Value = Union[int, float, str, bool]

# The MEmeL settings shown as HParams columns (docs/method.md §3-§5). TensorBoard shows
# the first five (alphabetically) at first: delta, k, late_start, selector, strategy.
MEMEL_SETTINGS = ("selector", "k", "target_ratio", "strategy", "delta", "late_start")
# Shown only where they matter: a fixed threshold, the regulariser's weight and form.
CONDITIONAL = {"tau": lambda c: c.get("tau") is not None,
               "reg_lambda": lambda c: c.get("strategy") == "regularize",
               "reg_form": lambda c: c.get("strategy") == "regularize"}


def memel_hparams(config: Any, labels: Sequence[str]) -> dict[str, Value]:
    """``{"memel/<setting>": value}`` for :data:`MEMEL_SETTINGS` (plus ``tau`` when set,
    ``reg_lambda``/``reg_form`` for the regulariser) and ``memel/taps``, the tap labels
    comma separated. ``config``: an ``MEmeLConfig`` (any dataclass) or a mapping.

    Example:
        >>> memel_hparams({"selector": "topk", "k": 1, "tau": None, "strategy": "reverse"}, ["blocks.0", "blocks.1"])
        {'memel/selector': 'topk', 'memel/k': 1, 'memel/strategy': 'reverse', 'memel/taps': 'blocks.0,blocks.1'}
    """
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    names = [n for n in MEMEL_SETTINGS if n in fields]
    names += [n for n, shown in CONDITIONAL.items() if n in fields and shown(fields)]
    out = {f"memel/{name}": _value(fields[name]) for name in names}
    out["memel/taps"] = ",".join(labels)
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
    the task's validation metrics (``val...``), the overall ``mono_ratio`` and ``fkr``,
    the per-tap ``mono_ratio`` and ``kill_concentration``, in that order (TensorBoard
    shows the first five at first).

    Example:
        >>> final_metric_tags(["val_acc", "train_loss", "memel/mono_ratio", "memel/b0/mono_ratio"], ["b0"])
        ['val_acc', 'memel/mono_ratio', 'memel/b0/mono_ratio']
    """
    logged = set(logged)
    wanted = sorted(t for t in logged if t.startswith("val"))
    wanted += [f"{prefix}/mono_ratio", f"{prefix}/fkr"]
    wanted += [f"{prefix}/{label}/mono_ratio" for label in labels]
    wanted += [f"{prefix}/kill_concentration"]
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
