"""LightningDataModules and data helpers, one per domain, imported lazily."""
from importlib import import_module
from typing import Any

_REGISTRY = {
    "DigitsDataModule": ".digits",
    "GlueDataModule": ".glue",
    "ImageNetDataModule": ".imagenet",
    "HKO7DataModule": ".hko7",
    "synthetic_radar": ".synthetic_radar",
    "TextDataModule": ".text",
    "GlueSubmissionWriter": ".glue_submission",
    "PolysemanticDataModule": ".toy_polysemantic",
}

__all__ = sorted(_REGISTRY)


def __getattr__(name: str) -> Any:
    if name not in _REGISTRY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(_REGISTRY[name], __name__)
    return module if module.__name__.endswith("." + name) else getattr(module, name)
