"""attach(model, taps, factory): one module per tapped layer, installed by forward hooks."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .memel import MEmeL
from .metrics import aggregate, reduce_across_ranks


class TapNotFoundError(ValueError):
    """A tap pattern matched no module of the model."""


def resolve_taps(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Module names matched by glob ``patterns`` (``fnmatch``), in the model's order.

    Every pattern must match at least one module; otherwise the error lists the
    nearest module names.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> resolve_taps(net, ["1", "2"])
        ['1', '2']
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    names = [name for name, _ in model.named_modules() if name]
    found: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3) or names[:5]
            raise TapNotFoundError(
                f"tap pattern {pattern!r} matches no module of {type(model).__name__}; "
                f"nearest module names: {close}"
            )
        found.extend(h for h in hits if h not in found)
    order = {n: i for i, n in enumerate(names)}
    return sorted(found, key=order.__getitem__)


class TapSet:
    """The handle :func:`attach` returns: the attached modules and their hooks.

    ``modules[name]`` is the module attached to layer ``name`` (``names`` in the model's
    order). Each hook passes the layer's output (or the first element of a tuple
    output, such as a Hugging Face block's) through its module, with the inputs set by
    :meth:`set_inputs` (a mask over a prefix of the output's axes, labels per batch
    item; a mask that does not fit a tap's output, e.g. a pooled one, is not passed).
    :meth:`remove` (or leaving the ``with`` block) removes every hook. For MEmeL modules,
    :meth:`begin_step`/:meth:`end_step` run the step lifecycle of all taps, and
    ``end_step`` merges all taps' metric states across ranks with one collective.

    Example (a plain PyTorch training loop):
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> with attach(net, ["1"], lambda name: MEmeL(name=name, k=1, late_start=1)) as taps:
        ...     for step in range(3):
        ...         taps.begin_step(record=True)
        ...         loss = net(torch.randn(16, 4)).square().mean()
        ...         loss.backward(); opt.step(); opt.zero_grad()
        ...         metrics = taps.end_step()
        ...         print(step, sorted(metrics)[:3], round(float(metrics["1/selected_frac"]), 4))
        0 ['1/concentrated_kills', '1/kill_concentration', '1/kills'] 0.0
        1 ['1/concentrated_kills', '1/kill_concentration', '1/kills'] 0.125
        2 ['1/concentrated_kills', '1/kill_concentration', '1/kills'] 0.125
        >>> len(net[1]._forward_hooks)   # removed on leaving the block
        0
    """

    def __init__(self, model: nn.Module, names: Sequence[str], modules: dict[str, nn.Module]) -> None:
        self.names = list(names)
        self.modules = dict(modules)
        self._mask: Optional[Tensor] = None
        self._labels: Optional[Tensor] = None
        layers = dict(model.named_modules())
        self._handles = [layers[name].register_forward_hook(self._hook(name)) for name in self.names]

    # ------------------------------------------------------------------ hooks
    def set_inputs(self, mask: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> None:
        """The current batch's mask and labels, passed to every tap until the next call."""
        self._mask, self._labels = mask, labels

    def _mask_for(self, z: Tensor) -> Optional[Tensor]:
        mask = self._mask
        if mask is not None and mask.dim() <= z.dim() and tuple(mask.shape) == tuple(z.shape[: mask.dim()]):
            return mask
        return None  # a tap whose output does not carry the masked axes (e.g. pooled)

    def _labels_for(self, z: Tensor) -> Optional[Tensor]:
        labels = self._labels
        return labels if labels is not None and labels.shape[:1] == z.shape[:1] else None

    def _apply(self, module: nn.Module, z: Tensor) -> Tensor:
        if isinstance(module, MEmeL):
            return module(z, self._mask_for(z), self._labels_for(z))
        return module(z)

    def _hook(self, name: str) -> Callable:
        def hook(layer: nn.Module, args: Any, output: Any) -> Any:
            module = self.modules[name]
            module.train(layer.training)
            if isinstance(output, Tensor):
                return self._apply(module, output)
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                return (self._apply(module, output[0]),) + tuple(output[1:])
            raise TypeError(
                f"tap {name!r}: cannot handle an output of type {type(output).__name__}; "
                "tap a module that returns a tensor or a tuple whose first element is one"
            )

        # Under torch.compile the hook runs eagerly (one graph break per tap): compiled, its frame
        # would be specialised on each tap's name and recompiled per tap up to dynamo's limit.
        return torch.compiler.disable(hook)

    def remove(self) -> None:
        """Remove every hook: the model computes what it would without the taps."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.set_inputs()

    def __enter__(self) -> "TapSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # ------------------------------------------------------------------ step lifecycle
    def memels(self) -> dict[str, MEmeL]:
        """The MEmeL modules among the taps, by tap name."""
        return {n: m for n, m in self.modules.items() if isinstance(m, MEmeL)}

    def begin_step(self, record: bool = True, histogram: bool = False, loss_scale: Any = 1.0) -> None:
        """``MEmeL.begin_step`` on every MEmeL tap."""
        for memel in self.memels().values():
            memel.begin_step(record=record, histogram=histogram, loss_scale=loss_scale)

    def end_step(self) -> dict[str, Tensor]:
        """Close every MEmeL tap's step; ``{"<tap>/<key>": value}`` plus the aggregates
        ``mono_ratio`` and ``kill_concentration`` (``fkr`` when labelled) over all taps.

        On recording steps with ``sync_dist`` taps, all taps' states are merged across
        ranks with ONE collective (every rank must call it)."""
        memels = self.memels()
        accs = {n: m.close_step() for n, m in memels.items()}
        recorded = {n: a for n, a in accs.items() if a is not None}
        synced = [n for n in recorded if memels[n].sync_dist]
        merged = dict(zip(synced, reduce_across_ranks([recorded[n] for n in synced])))
        per_tap: dict[str, dict[str, Tensor]] = {}
        for name, acc in recorded.items():
            states = merged[name] if name in merged else acc.snapshot()
            per_tap[name] = memels[name].metrics_from(states)
        out = {f"{name}/{key}": value for name, metrics in per_tap.items() for key, value in metrics.items()}
        out.update(aggregate(per_tap))
        return out


def attach(model: nn.Module, taps: Sequence[str], factory: Callable[[str], nn.Module]) -> TapSet:
    """Attach ``factory(name)`` to every module matched by the glob patterns ``taps``.

    Returns a :class:`TapSet` (also a context manager) that removes the hooks. A layer
    called several times per batch (a recurrent cell) goes through the same module at
    every call.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
        >>> tapset = attach(net, ["1"], lambda name: MEmeL(name=name, late_start=0))
        >>> tapset.names, type(tapset.modules["1"]).__name__
        (['1'], 'MEmeL')
        >>> tapset.remove()
    """
    names = resolve_taps(model, taps)
    return TapSet(model, names, {name: factory(name) for name in names})
