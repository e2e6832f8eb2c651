"""Count the kernels, bytes and matmul FLOPs of a forward+backward, per region.

:class:`DispatchCounter` is a ``TorchDispatchMode``: every ATen op that reaches the
dispatcher below autograd (and below autocast) passes through it, so it sees exactly
the ops a GPU would run, including the backward's and the casts autocast inserts. It
also works under ``FakeTensorMode`` (``torch._subclasses.fake_tensor``), where no op
computes or allocates anything, so a 2.8B-parameter model with 2048-token sequences
can be "run" on a small CPU machine.

Counting rules (one record per op):

- **Kernel launches.** An op counts as one launch unless it launches nothing on a
  GPU: a view or alias (its schema says the output aliases an input: ``view``,
  ``permute``, ``expand``, ``t``, ``slice``...; plus ``_unsafe_view``, ``detach``,
  ``alias``, ``lift_fresh``), an allocation without a fill (``empty*``,
  ``new_empty*``), a Python number made a 0-dim tensor (``scalar_tensor``: a
  host-side wrapped scalar on a GPU), a metadata query (``sym_size``, ``prim.device``...), or an op whose
  tensors are all empty. ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``) is
  a device-to-host sync and is counted under ``syncs``, not launches. A ``_foreach_``
  op counts as one launch (a GPU splits it into a few chunks).
- **Bytes.** Read: every distinct tensor argument once (the same tensor passed twice
  is read once), at its memory footprint: elements along axes of stride 0 (a
  broadcast ``expand``) are counted once, so an expanded ``(B, L, 1)`` mask costs
  ``B*L`` bytes. The destination of a write-only op (``copy_``, ``fill_``, ``zero_``,
  random fills, ``out=`` arguments) is not read. Gathers read only what they gather:
  ``embedding``, ``index_select``, ``gather`` and ``index`` read at most as many
  elements of their source as they output, ``nll_loss`` reads one logit per target.
  Written: every tensor output once; an in-place op writes its mutated argument once
  (it is not counted again as an output).
- **FLOPs.** ``torch.utils.flop_counter``'s formulas (matmuls, convolutions,
  attention; 2 FLOPs per multiply-add), plus the CPU flash-attention ops, which fake
  CPU runs dispatch to; a causal attention (``is_causal``, or any ``attn_mask`` when
  the counter is built with ``causal_masks=True``, for models that pass their causal
  mask as a tensor) counts half the ``L x L`` products (a flash kernel skips the
  masked blocks). Elementwise arithmetic is not counted: it is
  memory bound and its cost is in the bytes.

Regions: ops are charged to the innermost active region, ``"model"`` by default.
:meth:`DispatchCounter.attribute` charges a module's forward to a region with forward
pre/post hooks, and its backward too: on leaving the forward it walks the autograd
graph from the module's outputs back to its inputs and registers pre/post hooks on
every node created in between (autograd node sequence numbers later than the inputs'),
so those nodes' backward ops are charged to the region while they run. Gradient
accumulation into a tensor used twice happens between nodes and stays with the model.

Example:
    >>> import torch
    >>> counter = DispatchCounter()
    >>> a, b = torch.randn(8, 16), torch.randn(16, 4)
    >>> with counter:
    ...     _ = a @ b
    >>> c = counter.total()
    >>> c.kernels, c.flops, c.bytes_read, c.bytes_written   # 2*8*16*4; (128+64)*4; 32*4
    (1, 1024, 768, 128)
"""
from __future__ import annotations

from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

# Ops that launch nothing although their schema does not mark them as views.
NO_KERNEL = {
    "aten::_unsafe_view", "aten::_reshape_alias", "aten::detach", "aten::alias", "aten::lift_fresh",
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset", "aten::is_same_size",
    "aten::resize_", "aten::set_", "prim::device", "prim::layout",
    # the 0-dim host tensor of a Python number (``where(c, x, 0.0)``): on a GPU run it stays
    # on the host as a wrapped scalar; a CPU simulation cannot tell it from a device fill
    "aten::scalar_tensor",
}
SYNC = {"aten::_local_scalar_dense"}
# In-place ops that overwrite their destination without reading it.
WRITE_ONLY = {
    "aten::copy_", "aten::fill_", "aten::zero_", "aten::normal_", "aten::uniform_", "aten::bernoulli_",
    "aten::random_", "aten::exponential_", "aten::geometric_", "aten::log_normal_", "aten::cauchy_",
}
# Ops that read only part of their first tensor argument.
GATHERS = {"aten::embedding", "aten::index_select", "aten::gather", "aten::index"}
NLL = {"aten::nll_loss_forward", "aten::nll_loss2d_forward"}


def footprint(t: Tensor) -> int:
    """Bytes of memory a tensor spans: axes of stride 0 (broadcasts) count once."""
    if t.numel() == 0:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _cpu_flash_flops(query: Tensor, key: Tensor, value: Tensor, *_: Any, **__: Any) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_flash_backward_flops(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, *_: Any,
                              **__: Any) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


EXTRA_FLOPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": _cpu_flash_flops,
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_flash_backward_flops,
}
# Attention ops and the position of their is_causal argument: formulas count the full
# L x L products, a causal kernel computes about half of them.
CAUSAL_ARG = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": 4,
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 7,
    "aten::_scaled_dot_product_flash_attention": 4,
    "aten::_scaled_dot_product_flash_attention_backward": 9,
    "aten::_scaled_dot_product_efficient_attention": 5,
    "aten::_scaled_dot_product_efficient_attention_backward": 10,
    "aten::_scaled_dot_product_cudnn_attention": 6,
}


@dataclass
class OpRecord:
    """One dispatched op: where it ran and what it cost."""

    region: str
    phase: str  # "forward" or "backward"
    op: str
    kernels: int
    bytes_read: int
    bytes_written: int
    flops: int
    dtype: Optional[torch.dtype]  # of the first tensor input (the matmul precision)


@dataclass
class Cost:
    """Totals over a set of :class:`OpRecord`."""

    kernels: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    flops: int = 0
    syncs: int = 0
    ops: Counter = field(default_factory=Counter)  # op name -> launches

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def add(self, r: OpRecord) -> None:
        self.kernels += r.kernels
        self.bytes_read += r.bytes_read
        self.bytes_written += r.bytes_written
        self.flops += r.flops
        if r.op in SYNC:
            self.syncs += 1
        if r.kernels:
            self.ops[r.op] += r.kernels


def _tensors(tree: Any) -> list[Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, Tensor)]


def _written_args(func, args: tuple, kwargs: dict) -> tuple[list[Tensor], bool]:
    """The tensors an op mutates (schema alias info) and whether it only writes them."""
    schema = func._schema
    written: list[Tensor] = []
    write_only = schema.name in WRITE_ONLY
    for i, a in enumerate(schema.arguments):
        if a.alias_info is None or not a.alias_info.is_write:
            continue
        value = kwargs.get(a.name) if (a.kwarg_only or i >= len(args)) else args[i]
        ts = _tensors(value)
        written.extend(ts)
        if a.is_out:
            write_only = True
    return written, write_only


def _fresh_outputs(func, out: Any) -> list[Tensor]:
    """Outputs that are not a mutated argument returned again (``add_`` returns ``self``)."""
    returns = func._schema.returns
    values = list(out) if len(returns) > 1 and isinstance(out, (tuple, list)) else [out]
    fresh: list[Tensor] = []
    for ret, value in zip(returns, values):
        if ret.alias_info is None or not ret.alias_info.is_write:
            fresh.extend(_tensors(value))
    return fresh


def _launches(func, name: str, tensors: list[Tensor]) -> int:
    if name in NO_KERNEL or name in SYNC or func.is_view:
        return 0
    if tensors and all(t.numel() == 0 for t in tensors):
        return 0
    return 1


def _flops(func, name: str, args: tuple, kwargs: dict, out: Any, causal_masks: bool) -> int:
    formula = EXTRA_FLOPS.get(name)
    if formula is not None:
        flops = int(formula(*args, **kwargs))
    elif func._overloadpacket in flop_registry:
        flops = int(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
    else:
        return 0
    pos = CAUSAL_ARG.get(name)
    if pos is not None:
        causal = kwargs.get("is_causal", args[pos] if len(args) > pos else False) is True
        if causal or (causal_masks and kwargs.get("attn_mask") is not None):
            flops //= 2
    return flops


def op_record(func, args: tuple, kwargs: dict, out: Any, region: str, phase: str,
              causal_masks: bool = False) -> OpRecord:
    """Apply the counting rules (module docstring) to one dispatched op."""
    name = func._schema.name
    outputs = _tensors(out)
    inputs = _tensors((args, kwargs))
    kernels = _launches(func, name, inputs + outputs)
    if kernels == 0:
        return OpRecord(region, phase, name, 0, 0, 0, 0, None)
    mutated, write_only = _written_args(func, args, kwargs)
    mutated_ids = {id(t) for t in mutated}
    seen: set[int] = set()
    read = 0
    for i, t in enumerate(inputs):
        if id(t) in seen or (write_only and id(t) in mutated_ids):
            continue
        seen.add(id(t))
        size = footprint(t)
        if i == 0 and name in GATHERS and outputs:
            size = min(size, max(o.numel() for o in outputs) * t.element_size())
        elif i == 0 and name in NLL and len(inputs) > 1:
            size = min(size, inputs[1].numel() * t.element_size())
        read += size
    written_ids: set[int] = set()
    written = 0
    for t in mutated + _fresh_outputs(func, out):
        if id(t) not in written_ids:
            written_ids.add(id(t))
            written += footprint(t)
    dtype = inputs[0].dtype if inputs else None
    flops = _flops(func, name, args, kwargs, out, causal_masks)
    return OpRecord(region, phase, name, kernels, read, written, flops, dtype)


class DispatchCounter(TorchDispatchMode):
    """Record every dispatched op (see the module docstring) under the current region.

    Use as a context manager around one forward+backward; read :meth:`cost` per region
    (and phase) or :meth:`total`; ``records`` keeps every op for a per-op time model.
    ``causal_masks``: every attention mask is a causal one (module docstring).
    """

    def __init__(self, default_region: str = "model", causal_masks: bool = False) -> None:
        super().__init__()
        self.causal_masks = causal_masks
        self.records: list[OpRecord] = []
        self._stack: list[str] = [default_region]
        self._pending: list[tuple[str, list[Tensor]]] = []
        self._node_handles: list[Any] = []  # per graph: removed when the mode exits

    # ------------------------------------------------------------------ regions
    @property
    def region_name(self) -> str:
        return self._stack[-1]

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        """Charge the ops run inside (forward only) to ``name``."""
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    def attribute(self, module: nn.Module, name: str) -> list[Any]:
        """Charge ``module``'s forward and the backward of the graph it builds to ``name``.

        Returns the hook handles (``.remove()`` them to stop).
        """

        def enter(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            self._stack.append(name)
            self._pending.append((name, _tensors((args, kwargs))))

        def leave(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._stack.pop()
            region, inputs = self._pending.pop()
            self._track_backward(region, inputs, _tensors(output))

        return [
            module.register_forward_pre_hook(enter, with_kwargs=True),
            module.register_forward_hook(leave, with_kwargs=True, always_call=True),
        ]

    def _track_backward(self, region: str, inputs: list[Tensor], outputs: list[Tensor]) -> None:
        """Hook every autograd node between ``inputs`` and ``outputs`` (created in the region)."""
        boundary = {t.grad_fn for t in inputs if t.grad_fn is not None}
        oldest = max((n._sequence_nr() for n in boundary), default=-1)
        todo = [t.grad_fn for t in outputs if t.grad_fn is not None]
        seen: set = set()
        while todo:
            node = todo.pop()
            if node is None or node in seen or node in boundary:
                continue
            if type(node).__name__ == "AccumulateGrad" or node._sequence_nr() <= oldest:
                continue
            seen.add(node)
            self._node_handles.append(node.register_prehook(self._backward_enter(region)))
            self._node_handles.append(node.register_hook(self._backward_leave))
            todo.extend(nxt for nxt, _ in node.next_functions)

    def _backward_enter(self, region: str):
        def hook(grad_outputs: Any) -> None:
            self._stack.append(region)

        return hook

    def _backward_leave(self, grad_inputs: Any, grad_outputs: Any) -> None:
        self._stack.pop()

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        self.records.append(op_record(func, args, kwargs, out, self.region_name, phase, self.causal_masks))
        return out

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        for h in self._node_handles:
            h.remove()
        self._node_handles.clear()
        return result

    # ------------------------------------------------------------------ results
    def cost(self, region: Optional[str] = None, phase: Optional[str] = None) -> Cost:
        """Totals of the ops of ``region`` (all if None) in ``phase`` (both if None)."""
        c = Cost()
        for r in self.records:
            if (region is None or r.region == region) and (phase is None or r.phase == phase):
                c.add(r)
        return c

    def total(self) -> Cost:
        return self.cost()

    def by_region(self) -> dict[str, Cost]:
        out: dict[str, Cost] = defaultdict(Cost)
        for r in self.records:
            out[r.region].add(r)
        return dict(out)
