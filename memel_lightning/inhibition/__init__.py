"""The inhibition core: plain PyTorch, no Lightning (docs/method.md)."""
from . import metrics
from .attach import TapNotFoundError, TapSet, attach, resolve_taps
from .config import MEmeLConfig, MEmeLConfigError
from .layout import TapLayout, neuron_layout
from .memel import MEmeL
from .moments import NonFiniteStatisticsError, RunningMoments, all_reduce_moments, batch_moments
from .scale import monosemantic_scale
from .selectors import SELECTORS, MovingThreshold, Selector, Threshold, TopK, build_selector
from .strategies import (
    STRATEGIES,
    MeanNoGrad,
    MeanPassthrough,
    NoInhibition,
    Regularize,
    ReverseDeactivation,
    Strategy,
    TapStatistics,
    build_strategy,
)

__all__ = [
    "MEmeL",
    "MEmeLConfig",
    "MEmeLConfigError",
    "TapLayout",
    "neuron_layout",
    "attach",
    "TapSet",
    "resolve_taps",
    "TapNotFoundError",
    "metrics",
    "RunningMoments",
    "NonFiniteStatisticsError",
    "batch_moments",
    "all_reduce_moments",
    "monosemantic_scale",
    "Selector",
    "TopK",
    "Threshold",
    "MovingThreshold",
    "SELECTORS",
    "build_selector",
    "Strategy",
    "TapStatistics",
    "ReverseDeactivation",
    "MeanNoGrad",
    "MeanPassthrough",
    "NoInhibition",
    "Regularize",
    "STRATEGIES",
    "build_strategy",
]
