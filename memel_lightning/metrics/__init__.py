"""torchmetrics ``Metric`` s of the domains (plain PyTorch + torchmetrics, no Lightning)."""
from .nowcasting import (
    BALANCING_WEIGHTS,
    CSI,
    HSS,
    THRESHOLDS,
    BalancedMAE,
    BalancedMSE,
    balancing_weights,
    pixel_to_dbz,
    pixel_to_rainfall,
    rainfall_to_pixel,
)

__all__ = [
    "BALANCING_WEIGHTS",
    "CSI",
    "HSS",
    "THRESHOLDS",
    "BalancedMAE",
    "BalancedMSE",
    "balancing_weights",
    "pixel_to_dbz",
    "pixel_to_rainfall",
    "rainfall_to_pixel",
]
