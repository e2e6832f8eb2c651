"""MEmeLConfig: every setting of one MEmeL tap, typed, with defaults and validation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence


class MEmeLConfigError(ValueError):
    """An invalid MEmeL setting; the message names the setting and the allowed values."""


SELECTOR_NAMES = ("topk", "threshold", "moving_threshold")
STRATEGY_NAMES = ("reverse", "mean_nograd", "mean_passthrough", "regularize", "none")


@dataclass
class MEmeLConfig:
    """The settings of one MEmeL tap (docs/method.md gives every formula they enter).

    Invalid values raise :class:`MEmeLConfigError` with one line naming the setting.

    Args:
        selector: which values to select (§4): ``topk``, ``threshold`` or ``moving_threshold``.
        k: topk: values selected per sample, an integer >= 1 and at most the tap's neurons.
        tau: threshold: phi above which a value is selected (required for ``threshold``).
        target_ratio: moving_threshold: the share of values to select, in (0, 1).
        threshold_lr: moving_threshold: step size of the log-space update of tau (§4.3), > 0.
        strategy: what happens to a selected value (§5): ``reverse``, ``mean_nograd``,
            ``mean_passthrough``, ``regularize`` or ``none``.
        delta: reverse: gradient -delta on selected values (finite).
        reg_lambda: regularize: weight of the penalty (§5.2), >= 0.
        forget_steps: forgetting horizon n_f in statistics updates, i.e. calls of the tap (§2.4), >= 1.
        late_start: training batches that only feed the statistics; batch late_start + 1 is
            the first inhibited (§4.0), >= 0.
        eps: variance compensation of the Monosemantic Scale (§3), > 0.
        score_with: statistics phi is computed with (§3): ``updated`` (after merging the
            batch) or ``previous`` (before).
        reduce_dims: axes of the tap's per-sample shape pooled into the samples (§1).
        active_in_eval: select and inhibit in eval mode too, with frozen statistics.
        variable_shape: the first per-sample axis may change length between batches (dynamic padding).
        tau_report: phi above which a neuron counts as monosemantic in mono_ratio (§6.2), >= 0.
        max_share: kill_concentration: share of a neuron's samples above which its kills
            count as concentrated (§6.3), in [0, 1].
        nonfinite: a batch with NaN/inf activations: ``skip`` its statistics update or ``raise`` (§2.5).

    Example:
        >>> MEmeLConfig(k=2, delta=0.5).k
        2
        >>> MEmeLConfig(delta=float("nan"))
        Traceback (most recent call last):
        ...
        memel_lightning.inhibition.config.MEmeLConfigError: memel.delta must be a finite number, got nan
    """

    selector: str = "topk"
    k: int = 1
    tau: Optional[float] = None
    target_ratio: float = 0.02
    threshold_lr: float = 0.1
    strategy: str = "reverse"
    delta: float = 1.0
    reg_lambda: float = 1e-3
    forget_steps: int = 10
    late_start: int = 10
    eps: float = 0.01
    score_with: str = "updated"
    reduce_dims: Sequence[int] = ()
    active_in_eval: bool = False
    variable_shape: bool = False
    tau_report: float = 9.0
    max_share: float = 0.1
    nonfinite: str = "skip"

    def __post_init__(self) -> None:
        _choice("selector", self.selector, SELECTOR_NAMES)
        _choice("strategy", self.strategy, STRATEGY_NAMES)
        _choice("score_with", self.score_with, ("updated", "previous"))
        _choice("nonfinite", self.nonfinite, ("skip", "raise"))
        self.k = _integer("k", self.k, minimum=1)
        self.forget_steps = _integer("forget_steps", self.forget_steps, minimum=1)
        self.late_start = _integer("late_start", self.late_start, minimum=0)
        if self.tau is not None:
            self.tau = _number("tau", self.tau)
        if self.selector == "threshold" and self.tau is None:
            raise MEmeLConfigError("memel.tau must be set for selector='threshold' (phi above which a value is selected)")
        self.target_ratio = _number("target_ratio", self.target_ratio, low=0.0, high=1.0, open_low=True, open_high=True)
        self.threshold_lr = _number("threshold_lr", self.threshold_lr, low=0.0, open_low=True)
        self.delta = _number("delta", self.delta)
        self.reg_lambda = _number("reg_lambda", self.reg_lambda, low=0.0)
        self.eps = _number("eps", self.eps, low=0.0, open_low=True)
        self.tau_report = _number("tau_report", self.tau_report, low=0.0)
        self.max_share = _number("max_share", self.max_share, low=0.0, high=1.0)
        for name in ("active_in_eval", "variable_shape"):
            if not isinstance(getattr(self, name), bool):
                raise MEmeLConfigError(f"memel.{name} must be true or false, got {getattr(self, name)!r}")
        dims = self.reduce_dims
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
            raise MEmeLConfigError(f"memel.reduce_dims must be a list of axes of the tap's neuron shape, got {dims!r}")
        dims = tuple(_integer("reduce_dims", d, minimum=0) for d in dims)
        if len(set(dims)) != len(dims):
            raise MEmeLConfigError(f"memel.reduce_dims must be distinct axes, got {list(dims)}")
        self.reduce_dims = tuple(sorted(dims))

    def replace(self, **changes: Any) -> "MEmeLConfig":
        """A copy with ``changes`` applied (validated; unknown names are refused)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise MEmeLConfigError(f"unknown memel setting(s) {unknown}; the settings are {sorted(known)}")
        return MEmeLConfig(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MEmeLConfigError(f"memel.{name} must be one of {list(allowed)}, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> int:
    # 1.5 is refused, not truncated; 2.0 (e.g. from a YAML float) is accepted as 2.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())
    ):
        raise MEmeLConfigError(f"memel.{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise MEmeLConfigError(f"memel.{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(
    name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
    open_low: bool = False, open_high: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MEmeLConfigError(f"memel.{name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if open_low else value < low)
    too_high = high is not None and (value >= high if open_high else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if open_low or low is None else '['}{lo}, {hi}{')' if open_high or high is None else ']'}"
        raise MEmeLConfigError(f"memel.{name} must be in {interval}, got {value!r}")
    return value
