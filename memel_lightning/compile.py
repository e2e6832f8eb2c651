"""torch.compile for a LightningModule with MEmeL taps attached.

How the taps and ``torch.compile`` fit together: every MEmeL tap runs outside the
compiled graphs (``MEmeL.forward`` is wrapped in ``torch.compiler.disable``). A tap keeps
Python state that changes every step (the step counter behind ``late_start``, the open
step's metric accumulators, buffers sized by the first batch, the moving threshold's
start); traced by dynamo, each of those would become a guard and the model would be
recompiled at every step until dynamo gives up. Disabled, a tap costs one graph break
per call: a network with T taps is compiled as T + 1 graphs, and each tap runs its own
fused kernels (``inhibition/fused.py``, themselves compiled for large tensors). The
backward of the compiled pieces and of the tap's autograd function chain as usual.

:class:`CompileModel` compiles the LightningModule's networks in place
(``nn.Module.compile``), so module names (and tap patterns) do not change, and counts
what dynamo did: ``compilations`` (graphs handed to the backend, warm-up and any
recompilation) and ``graph_breaks`` (with reasons). Wiring, YAML for LightningCLI::

    trainer:
      callbacks:
        - class_path: memel_lightning.compile.CompileModel
          init_args: {modules: auto}

Example (plain PyTorch; the callback does the same for Lightning):
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    >>> stats = compile_modules(net, ["0"])   # compiled on the first call
    >>> stats.compilations
    0
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

try:  # the callback needs Lightning; compile_modules does not
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - Lightning is a dependency of the package
    Callback = object  # type: ignore[misc,assignment]
    LightningModule = Trainer = Any  # type: ignore[misc,assignment]


class CompileStats:
    """What dynamo did since :meth:`reset`: ``compilations`` (backend calls: one per graph
    compiled, so warm-up graphs plus recompilations) and ``graph_breaks`` (reason -> count,
    from dynamo's counters, process-wide)."""

    def __init__(self) -> None:
        self.compilations = 0
        self._breaks_at_reset: Counter = Counter()
        self.reset()

    def reset(self) -> None:
        self.compilations = 0
        self._breaks_at_reset = Counter(_graph_break_counter())

    @property
    def graph_breaks(self) -> dict[str, int]:
        now = Counter(_graph_break_counter())
        now.subtract(self._breaks_at_reset)
        return {reason.splitlines()[0]: n for reason, n in now.items() if n > 0}

    def counting_backend(self, backend: Union[str, Callable]) -> Callable:
        """Wrap ``backend`` (a name such as ``"inductor"`` or a callable) to count its calls."""
        inner = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

        def count_and_compile(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
            self.compilations += 1
            return inner(gm, example_inputs)

        return count_and_compile


def _graph_break_counter() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return dict(counters.get("graph_break", {}))


def compile_modules(
    root: nn.Module,
    modules: Union[str, Sequence[str]] = "auto",
    *,
    backend: Union[str, Callable] = "inductor",
    dynamic: Optional[bool] = None,
    stats: Optional[CompileStats] = None,
) -> CompileStats:
    """Compile submodules of ``root`` in place with ``torch.compile`` and return the stats.

    ``modules``: names of submodules (``""`` is ``root`` itself), or ``"auto"``: every
    direct child that has parameters (a LightningModule's networks; its
    ``training_step`` stays eager and calls them). In place (``nn.Module.compile``):
    names, state dicts and hooks (the taps) stay as they are.
    """
    stats = stats or CompileStats()
    for name in _targets(root, modules):
        module = root.get_submodule(name) if name else root
        module.compile(backend=stats.counting_backend(backend), dynamic=dynamic)
    return stats


def _targets(root: nn.Module, modules: Union[str, Sequence[str]]) -> list[str]:
    if modules == "auto":
        names = [name for name, child in root.named_children() if any(True for _ in child.parameters())]
        if not names:
            raise ValueError(f"compile: {type(root).__name__} has no child module with parameters to compile")
        return names
    names = [modules] if isinstance(modules, str) else list(modules)
    known = {name for name, _ in root.named_modules()}
    for name in names:
        if name not in known:
            raise ValueError(f"compile: {type(root).__name__} has no submodule {name!r}")
    return names


class CompileModel(Callback):
    """Compile the LightningModule's networks with ``torch.compile`` at ``setup``.

    ``modules`` (``"auto"``: every direct child with parameters, or a list of submodule
    names), ``backend``, ``dynamic``: as for ``torch.compile``. After training,
    ``stats.compilations`` and ``stats.graph_breaks`` say what was compiled (see the
    module docstring for why each tap is one graph break). ``enabled=False`` makes the
    callback a no-op (a config switch).
    """

    def __init__(
        self,
        modules: Union[str, Sequence[str]] = "auto",
        backend: str = "inductor",
        dynamic: Optional[bool] = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.modules = modules
        self.backend = backend
        self.dynamic = dynamic
        self.enabled = bool(enabled)
        self.stats = CompileStats()
        self._done = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not self.enabled or self._done:
            return
        compile_modules(pl_module, self.modules, backend=self.backend, dynamic=self.dynamic, stats=self.stats)
        self._done = True
