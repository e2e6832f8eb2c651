"""The one optimiser and learning-rate schedule of the domain modules.

:func:`adamw` builds AdamW with one no-decay rule for every domain (the rule of timm's
``param_groups_weight_decay`` and transformers' ``Trainer``): no weight decay on biases,
on every tensor of at most one dimension (norm scales and shifts) and on the parameters
the network lists in its ``no_weight_decay()`` (timm: position embeddings, Swin's
relative position tables). Word embeddings and every other matrix are decayed.

:func:`warmup_decay` is the multiplier of the base learning rate at optimiser step ``t``:
a linear warm-up from ``start_factor`` to 1 over ``W`` steps, then a linear or cosine decay
to ``end_factor`` at step ``T``::

    t < W:  f(t) = start + (1 - start) * t / W
    t >= W: p = min(1, (t - W) / max(1, T - W))
            linear: f = end + (1 - end) * (1 - p)
            cosine: f = end + (1 - end) * (1 + cos(pi * p)) / 2

:func:`lazy_lambda_lr` wraps it in a ``LambdaLR`` whose ``(W, T)`` are computed when the
first optimiser step needs them, not in ``configure_optimizers``: Lightning calls
``configure_optimizers`` before it restores a checkpoint's loop state, and asking the
trainer for ``estimated_stepping_batches`` there builds the train loader too early, so a
mid-epoch resume would not restore the loader's position (and would not be exact).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

DECAYS = ("linear", "cosine", "constant")


def no_weight_decay(name: str, param: torch.Tensor, skip: Sequence[str] = ()) -> bool:
    """True if ``param`` (named ``name``) gets no weight decay: biases, 0-d/1-d tensors
    (norms), and names listed in ``skip`` (a module's ``no_weight_decay()``), exactly or as a
    dotted suffix (``layers.0.blocks.1.attn.relative_position_bias_table``).

    Example:
        >>> no_weight_decay("fc.bias", torch.zeros(3, 3)), no_weight_decay("ln.weight", torch.zeros(3))
        (True, True)
        >>> no_weight_decay("fc.weight", torch.zeros(3, 3)), no_weight_decay("pos_embed", torch.zeros(1, 4, 8), ["pos_embed"])
        (False, True)
    """
    if param.ndim <= 1 or name.endswith(".bias"):
        return True
    return any(name == s or name.endswith("." + s) for s in skip)


def _skip_list(module: nn.Module) -> list[str]:
    """Names a network (or its timm/transformers submodules) excludes from weight decay."""
    names: list[str] = []
    for prefix, sub in module.named_modules():
        fn = getattr(sub, "no_weight_decay", None)
        if callable(fn):
            try:
                listed = fn()
            except TypeError:
                continue
            names += [f"{prefix}.{n}" if prefix else str(n) for n in listed]
    return names


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW parameter groups of ``module``'s trainable parameters: decayed, then not.

    Example:
        >>> groups = param_groups(nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2)), 0.01)
        >>> [(g["weight_decay"], len(g["params"])) for g in groups]
        [(0.01, 1), (0.0, 3)]
    """
    skip = _skip_list(module)
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param, skip) else decay).append(param)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: Optional[float] = None,
    fused: Optional[bool] = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (or timm's layer-wise decay groups, which use the same
    no-decay rule, when ``layer_decay`` is set).

    Example:
        >>> opt = adamw(nn.Linear(3, 2), lr=1e-3, weight_decay=0.05)
        >>> [g["weight_decay"] for g in opt.param_groups]
        [0.05, 0.0]
    """
    if layer_decay is not None:
        from timm.optim._param_groups import param_groups_layer_decay

        groups = param_groups_layer_decay(module, weight_decay=weight_decay, layer_decay=layer_decay,
                                          no_weight_decay_list=_skip_list(module))
    else:
        groups = param_groups(module, weight_decay)
    kwargs: dict[str, Any] = {} if fused is None else {"fused": fused}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def warmup_decay(
    t: int, warmup: int, total: int, decay: str = "linear", start_factor: float = 0.0, end_factor: float = 0.0
) -> float:
    """The learning-rate multiplier at optimiser step ``t`` (see the module docstring).

    ``decay="linear"`` with factors 0/0 is transformers' ``get_linear_schedule_with_warmup``.

    Example:
        >>> [warmup_decay(t, 2, 6) for t in range(7)]
        [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
        >>> round(warmup_decay(4, 2, 6, "cosine", end_factor=0.1), 3)
        0.55
    """
    if t < warmup:
        return start_factor + (1.0 - start_factor) * t / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (t - warmup) / max(1, total - warmup)))
    if decay == "linear":
        return end_factor + (1.0 - end_factor) * (1.0 - progress)
    if decay == "cosine":
        return end_factor + (1.0 - end_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")


def warmup_steps(fraction: float, total: int) -> int:
    """Warm-up length for a fraction of ``total`` steps: ``int(fraction * total)``, and at least
    one step when ``fraction > 0`` (so the first step's factor is known before ``total``).

    Example:
        >>> warmup_steps(0.1, 50), warmup_steps(0.1, 5), warmup_steps(0.0, 50)
        (5, 1, 0)
    """
    if fraction <= 0:
        return 0
    return max(1, int(fraction * total))


def lazy_lambda_lr(
    optimizer: torch.optim.Optimizer,
    lengths: Callable[[], tuple[int, int]],
    decay: str = "linear",
    start_factor: float = 0.0,
    end_factor: float = 0.0,
    warms_up: bool = True,
    on_resolve: Optional[Callable[[int, int], None]] = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` of :func:`warmup_decay` whose ``lengths() -> (warmup, total)`` is called
    at the first step after 0 (step 0's factor is ``start_factor`` if ``warms_up`` else 1).

    The lambda is a closure, not a callable object, so ``LambdaLR.state_dict`` does not try to
    save it (it saves callable objects' ``__dict__``); a resumed run resolves the lengths
    again, from the restored trainer.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = lazy_lambda_lr(opt, lambda: (2, 4))
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    resolved: list[tuple[int, int]] = []

    def factor(t: int) -> float:
        if t == 0 and not resolved:
            return start_factor if warms_up else 1.0
        if not resolved:
            resolved.append(tuple(int(v) for v in lengths()))  # type: ignore[arg-type]
            if on_resolve is not None:
                on_resolve(*resolved[0])
        warmup, total = resolved[0]
        return warmup_decay(t, warmup, total, decay, start_factor, end_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
