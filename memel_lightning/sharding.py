"""Sharding a model with FSDP2 under Lightning's ModelParallelStrategy, MEmeL taps included.

Lightning's ``ModelParallelStrategy`` asks the LightningModule to shard itself in
``configure_model()``; :func:`shard_for_strategy` does it for a stack of transformer
layers: ``fully_shard`` on every layer, then on the whole model, over the strategy's
data-parallel mesh. Why this works with MEmeL taps:

- FSDP2 shards parameters in place and does not rename modules, so the taps
  (``model.gpt_neox.layers.<i>.mlp.act``) resolve as without sharding. (FSDP1, Lightning's
  ``FSDPStrategy``, wraps modules and inserts ``_fsdp_wrapped_module.`` into their names;
  the callback attaches its hooks in ``setup``, before the strategy wraps the model, and
  the hooks stay on the wrapped modules.)
- A tap's output (an MLP activation) is a whole, unsharded activation of the rank's own
  samples, so the running statistics are all-reduced over the default process group as
  under DDP (``sync_stats``): every rank holds the statistics of the global batch. This
  requires pure data parallelism: with tensor parallelism a rank would hold a slice of
  the neurons and the statistics of the same neurons would be summed over the
  tensor-parallel ranks, so :func:`shard_for_strategy` refuses ``tensor_parallel_size > 1``.
- Do not combine MEmeL taps with activation checkpointing: the recomputation in the
  backward pass calls each tap a second time, merging the batch into the statistics twice.

Example (inside a LightningModule)::

    def configure_model(self) -> None:
        shard_for_strategy(self, self.model, self.model.gpt_neox.layers)
"""
from __future__ import annotations

from typing import Iterable

from torch import nn


def shard_for_strategy(pl_module, model: nn.Module, layers: Iterable[nn.Module]) -> bool:
    """Apply FSDP2 ``fully_shard`` to ``layers`` and ``model`` when the trainer's strategy
    is ``ModelParallelStrategy``; a no-op otherwise (and when already sharded).

    Returns whether the model is sharded on return."""
    trainer = getattr(pl_module, "_trainer", None)
    if trainer is None:
        return False
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, ModelParallelStrategy):
        return False
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return True
    mesh = strategy.device_mesh
    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"ModelParallelStrategy with tensor_parallel_size={mesh['tensor_parallel'].size()}: MEmeL taps need "
            "whole activations on every rank; use tensor_parallel_size=1 (pure FSDP2 data parallelism)"
        )
    dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    for layer in layers:
        fully_shard(layer, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    return True
