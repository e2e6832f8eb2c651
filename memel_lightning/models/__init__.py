"""LightningModules, one per domain. Imported lazily: naming one loads only its domain's
dependencies (so the toy model does not import transformers)."""
from importlib import import_module
from typing import Any

_REGISTRY = {
    "DigitsClassifier": ".digits",
    "GlueClassifier": ".glue",
    "ImageClassifier": ".image",
    "Nowcaster": ".nowcaster",
    "CausalLM": ".causal_lm",
    "PolysemanticToy": ".toy_polysemantic",
}

__all__ = sorted(_REGISTRY)


def __getattr__(name: str) -> Any:
    if name not in _REGISTRY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_REGISTRY[name], __name__), name)
