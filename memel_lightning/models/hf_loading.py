"""Loading Hugging Face checkpoints with one plain line instead of transformers' load report."""
from __future__ import annotations

from typing import Any, Callable

from lightning.pytorch.utilities import rank_zero_info


def from_pretrained_quietly(load: Callable[..., Any], source: str, what: str, **kwargs: Any) -> Any:
    """``load(source, output_loading_info=True, **kwargs)`` with transformers' logging and
    progress bars off; the keys it had to initialise are reported in one line instead of
    transformers 5's multi-line "LOAD REPORT" table (ANSI codes included, also in log files).

    Example:
        >>> from transformers import BertConfig, BertModel, BertForSequenceClassification
        >>> import tempfile; d = tempfile.mkdtemp()
        >>> BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
        ...     intermediate_size=8, vocab_size=10)).save_pretrained(d)
        >>> m = from_pretrained_quietly(BertForSequenceClassification.from_pretrained, d, "demo", num_labels=2)
        >>> type(m).__name__
        'BertForSequenceClassification'
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = load(source, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    new = sorted(set(info.get("missing_keys") or []) | {str(k[0]) if isinstance(k, tuple) else str(k)
                                                        for k in info.get("mismatched_keys") or []})
    unused = sorted(info.get("unexpected_keys") or [])
    parts = [f"{what}: loaded {source}"]
    if new:
        parts.append(f"newly initialised: {', '.join(new[:6])}{' ...' if len(new) > 6 else ''}")
    if unused:
        parts.append(f"{len(unused)} unused checkpoint tensors (e.g. {unused[0]})")
    rank_zero_info("; ".join(parts))
    return model
