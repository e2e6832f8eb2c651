"""memel_lightning: monosemantic neuron inhibition (MEmeL, L2E) for PyTorch Lightning.

The layout follows the architecture: ``inhibition`` (plain PyTorch core) ->
``callback`` (Lightning) -> ``models`` / ``data`` (domains) -> ``cli``.
"""
from importlib import import_module
from typing import Any

from .inhibition import (
    MEmeL,
    MEmeLConfig,
    MEmeLConfigError,
    MovingThreshold,
    RunningMoments,
    TapLayout,
    TapSet,
    Threshold,
    TopK,
    attach,
    monosemantic_scale,
)

__version__ = "0.1.0"

__all__ = [
    "MEmeL",
    "MEmeLConfig",
    "MEmeLConfigError",
    "MEmeLCallback",
    "TapLayout",
    "TapSet",
    "attach",
    "RunningMoments",
    "monosemantic_scale",
    "TopK",
    "Threshold",
    "MovingThreshold",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The callback imports Lightning; keep ``import memel_lightning.inhibition`` free of it.
    if name == "MEmeLCallback":
        return import_module(".callback", __name__).MEmeLCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
