"""The inhibition core: plain PyTorch, no Lightning (SPEC sections 1-5, 8)."""
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
