"""Where MEmeL goes by default in each domain's network (docs/method.md §6), in one place.

- a stack of blocks of depth ``d``: the middle four, ``d/2-2 .. d/2+1`` clipped to the stack
  (:func:`middle_blocks`; BERT-base 4-7 of 12, MiniLM-L6 1-4, Swin-T's stage 3 1-4 of 6);
- Hugging Face encoders (BERT and kin): the middle blocks of the encoder's block list
  (:func:`encoder_blocks`, :func:`hf_encoder_taps`);
- timm models: Swin's stage 3, else the deepest stage, else a flat ``blocks`` list
  (:func:`timm_default_taps`);
- GPT-NeoX (Pythia, L2E): every layer's MLP activation (:func:`gpt_neox_mlp_taps`).
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

BLOCK_LISTS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer", "h", "blocks")


def middle_blocks(depth: int, count: int = 4) -> list[int]:
    """Indices of the middle ``count`` blocks of a stack of ``depth``: from ``depth // 2 - count // 2``.

    Stacks of at most ``count`` blocks: all of them.

    Example:
        >>> middle_blocks(12), middle_blocks(6), middle_blocks(18), middle_blocks(24), middle_blocks(3)
        ([4, 5, 6, 7], [1, 2, 3, 4], [7, 8, 9, 10], [10, 11, 12, 13], [0, 1, 2])
    """
    if depth < 1:
        raise ValueError(f"a stack needs at least one block, got depth {depth}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if depth <= count:
        return list(range(depth))
    start = max(0, depth // 2 - count // 2)
    return list(range(start, min(depth, start + count)))


def encoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name (relative to ``model``) and the ModuleList of a transformer's block stack.

    Looks in ``model.base_model`` for ``encoder.layer`` (BERT, RoBERTa, ELECTRA),
    ``encoder.layers``, ``transformer.layer`` (DistilBERT), ``layers``, ``layer``, ``h``,
    ``blocks``; otherwise takes the longest ``nn.ModuleList`` under it.

    Example:
        >>> net = nn.Module(); net.layers = nn.ModuleList(nn.Identity() for _ in range(3))
        >>> name, blocks = encoder_blocks(net); name, len(blocks)
        ('layers', 3)
    """
    base = getattr(model, "base_model", model)
    names = {id(m): n for n, m in model.named_modules()}
    for path in BLOCK_LISTS:
        mod: Any = base
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return names[id(mod)], mod
    lists = [(n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError(f"{type(model).__name__}: found no stack of transformer blocks (no nn.ModuleList)")
    _, best = max(lists, key=lambda nm: len(nm[1]))
    return names[id(best)], best


def hf_encoder_taps(model: nn.Module, prefix: str = "", count: int = 4) -> list[str]:
    """The outputs of the middle ``count`` blocks of a Hugging Face encoder, as module names.

    Example:
        >>> net = nn.Module(); net.layers = nn.ModuleList(nn.Identity() for _ in range(12))
        >>> hf_encoder_taps(net, prefix="model.")
        ['model.layers.4', 'model.layers.5', 'model.layers.6', 'model.layers.7']
    """
    name, blocks = encoder_blocks(model)
    return [f"{prefix}{name}.{i}" for i in middle_blocks(len(blocks), count)]


def _stages(model: nn.Module) -> Optional[tuple[str, list[int]]]:
    """``(stage container name, blocks per stage)`` of a timm model, or None if unknown.

    Recognised layouts: ``layers.<s>.blocks.<i>`` (Swin, Swin V2), ``stages.<s>.blocks.<i>``
    (ConvNeXt, MaxViT-like, many timm CNNs) and a flat ``blocks.<i>`` (ViT, DeiT, BEiT),
    which counts as one stage.
    """
    for attr in ("layers", "stages"):
        container = getattr(model, attr, None)
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and len(container) > 0:
            if all(isinstance(getattr(s, "blocks", None), (nn.ModuleList, nn.Sequential)) for s in container):
                return attr, [len(s.blocks) for s in container]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) > 0:
        return "", [len(blocks)]
    return None


def timm_default_taps(model: nn.Module, prefix: str = "") -> list[str]:
    """Default MEmeL taps of a timm model, as full module names (``prefix`` + name).

    Rule (docs/method.md §6 for Swin, generalised):

    - Swin (``layers.<s>.blocks``, at least 3 stages): stage 3 (index 2), blocks
      ``d/2-2 .. d/2+1`` of its depth ``d`` (:func:`middle_blocks`);
    - other timm models with ``stages.<s>.blocks`` / ``layers.<s>.blocks``: the same middle
      blocks of the deepest stage (the first one on ties);
    - flat ``blocks`` (ViT): the middle blocks of that list (like BERT's 4-7 of 12);
    - anything else: a ``ValueError`` asking for explicit taps.

    Example:
        >>> import timm
        >>> net = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
        ...     embed_dim=8, num_heads=(1, 1, 1, 1), img_size=32, patch_size=2, window_size=4)
        >>> timm_default_taps(net, prefix="model.")
        ['model.layers.2.blocks.1', 'model.layers.2.blocks.2', 'model.layers.2.blocks.3', 'model.layers.2.blocks.4']
    """
    found = _stages(model)
    if found is None:
        raise ValueError(
            f"no default MEmeL taps for {type(model).__name__}: it has none of the block layouts "
            "'layers.<s>.blocks', 'stages.<s>.blocks' or 'blocks'; pass explicit taps to "
            "MEmeLCallback, e.g. taps: ['model.stages.2.*']"
        )
    attr, depths = found
    if not attr:
        return [f"{prefix}blocks.{i}" for i in middle_blocks(depths[0])]
    is_swin = attr == "layers" and "swin" in type(model).__name__.lower()
    stage = 2 if is_swin and len(depths) >= 3 else max(range(len(depths)), key=lambda s: (depths[s], -s))
    return [f"{prefix}{attr}.{stage}.blocks.{i}" for i in middle_blocks(depths[stage])]


def gpt_neox_mlp_taps(num_layers: int, prefix: str = "model.") -> list[str]:
    """Every GPT-NeoX layer's MLP activation (``CausalLM(placement="all")``; L2E's preferred
    placement is the two middle layers, ``placement="mid2"``, docs/l2e.md).

    Example:
        >>> gpt_neox_mlp_taps(2)
        ['model.gpt_neox.layers.0.mlp.act', 'model.gpt_neox.layers.1.mlp.act']
    """
    return [f"{prefix}gpt_neox.layers.{i}.mlp.act" for i in range(num_layers)]
