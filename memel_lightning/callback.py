"""MEmeLCallback: install the inhibition core on any LightningModule by layer name."""
from __future__ import annotations

import difflib
import fnmatch
import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

from .inhibition import MEmeL, Regularize

PER_TAP = ("selected_frac", "mono_ratio", "phi_mean", "phi_max", "fkr", "reg_loss")


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


def default_taps(pl_module: nn.Module) -> list[str]:
    """The module's own tap names: a ``memel_taps()`` method or a ``memel_taps`` list."""
    taps = getattr(pl_module, "memel_taps", None)
    if taps is None:
        raise ValueError(
            f"taps='default' but {type(pl_module).__name__} defines no memel_taps(); "
            "pass explicit glob patterns, e.g. taps: ['encoder.layer.4', 'encoder.layer.5']"
        )
    taps = taps() if callable(taps) else taps
    if isinstance(taps, str):
        taps = [taps]
    return list(taps)


class MEmeLCallback(Callback):
    r"""Monosemantic neuron inhibition (MEmeL / L2E) on any LightningModule.

    For every module matched by ``taps`` (glob patterns over ``named_modules()``, or
    ``"default"`` to use the LightningModule's ``memel_taps()``) one
    :class:`~memel_lightning.inhibition.MEmeL`, built from the ``memel`` keyword
    arguments, is attached with a forward hook that replaces the module's output (the
    first element of a tuple output, such as a Hugging Face block's). A module called
    several times per batch (a recurrent cell over time steps) shares one MEmeL.

    Padding: if the LightningModule defines ``memel_mask(batch)``, its result (bool or
    0/1, shape a prefix of each tap's output, e.g. ``(B, L)``) is passed to every tap
    for that batch, so padding is never in the statistics nor selected.

    Logs (on rank zero, every ``log_every_n_steps`` training batches) the SPEC section 8
    metrics as ``memel/<tap>/<metric>`` plus ``memel/mono_ratio`` and ``memel/fkr`` over
    all taps (weighted by neurons and kills), and a histogram of phi every
    ``hist_every_n_steps`` (TensorBoard loggers). With ``sync_stats`` the batch
    moments are all-reduced across DDP ranks, so all ranks hold the statistics of the
    global batch. The statistics are saved in the checkpoint and restored on resume.
    Hooks are removed at teardown: afterwards the model computes what it would
    without the callback.

    Example (YAML for LightningCLI)::

        trainer:
          callbacks:
            - class_path: memel_lightning.MEmeLCallback
              init_args:
                taps: ["model.encoder.layer.[4-7]"]
                memel: {selector: topk, k: 1, strategy: reverse, delta: 1.0}
    """

    def __init__(
        self,
        taps: Union[str, Sequence[str]] = "default",
        memel: Optional[Mapping[str, Any]] = None,
        log_every_n_steps: int = 50,
        hist_every_n_steps: int = 500,
        sync_stats: bool = True,
    ) -> None:
        super().__init__()
        if log_every_n_steps < 1 or hist_every_n_steps < 1:
            raise ValueError("log_every_n_steps and hist_every_n_steps must be >= 1")
        self.taps = taps if isinstance(taps, str) else list(taps)
        self.memel_kwargs = dict(memel or {})
        MEmeL(**self.memel_kwargs)  # fail now, not at the first batch, on a bad option
        self.log_every_n_steps = int(log_every_n_steps)
        self.hist_every_n_steps = int(hist_every_n_steps)
        self.sync_stats = bool(sync_stats)
        self.memels = nn.ModuleDict()  # keys: tap names with '.' replaced (ModuleDict forbids dots)
        self.tap_names: list[str] = []
        self._handles: list[Any] = []
        self._mask: Optional[Tensor] = None
        self._pending_state: Optional[dict[str, Any]] = None
        self._train_batches = 0
        self._skipped_seen: dict[str, int] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(taps=str(self.taps), memel=str(sorted(self.memel_kwargs.items())))

    # ------------------------------------------------------------------ install
    def memel_for(self, tap: str) -> MEmeL:
        """The MEmeL attached to module ``tap``."""
        return self.memels[_key(tap)]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        patterns = default_taps(pl_module) if self.taps == "default" else self.taps
        names = resolve_taps(pl_module, patterns)
        _refuse_recomputation(pl_module)
        if self.tap_names and names != self.tap_names:
            raise ValueError(f"taps changed between runs: {self.tap_names} -> {names}")
        self.tap_names = names
        for name in names:
            if _key(name) not in self.memels:
                memel = MEmeL(name=name, **self.memel_kwargs)
                memel.sync_dist = self.sync_stats
                self.memels[_key(name)] = memel
        self.memels.to(pl_module.device)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None
        self._install(pl_module)

    def _install(self, pl_module: LightningModule) -> None:
        self._remove_hooks()
        modules = dict(pl_module.named_modules())
        for name in self.tap_names:
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        memel = self.memel_for(name)

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            memel.train(module.training)
            if isinstance(output, Tensor):
                return memel(output, self._mask_for(output))
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                return (memel(output[0], self._mask_for(output[0])),) + tuple(output[1:])
            raise TypeError(
                f"tap {name!r}: cannot inhibit an output of type {type(output).__name__}; "
                "tap a module that returns a tensor or a tuple whose first element is one"
            )

        return hook

    def _mask_for(self, z: Tensor) -> Optional[Tensor]:
        mask = self._mask
        if mask is None:
            return None
        if mask.dim() <= z.dim() and tuple(mask.shape) == tuple(z.shape[: mask.dim()]):
            return mask
        return None  # a tap whose output does not carry the masked axes (e.g. pooled)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._mask = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    # ------------------------------------------------------------------ per batch
    def _set_mask(self, pl_module: LightningModule, batch: Any) -> None:
        get_mask = getattr(pl_module, "memel_mask", None)
        self._mask = get_mask(batch) if callable(get_mask) else None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._set_mask(pl_module, batch)
        step = self._train_batches
        record = step % self.log_every_n_steps == 0
        histogram = step % self.hist_every_n_steps == 0
        multiplier = _loss_multiplier(trainer)
        for memel in self.memels.values():
            memel.record_metrics = record or histogram
            memel.record_histogram = histogram
            memel.last_metrics = {}
            memel.last_kills_per_neuron = None
            if isinstance(memel.strategy, Regularize):
                memel.strategy.grad_multiplier = multiplier

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = self._train_batches
        self._train_batches += 1
        self._mask = None
        if step % self.log_every_n_steps == 0:
            self._log_metrics(trainer, pl_module)
        if step % self.hist_every_n_steps == 0:
            self._log_histograms(trainer)
        for memel in self.memels.values():
            memel.last_phi_sample = None

    def _eval_batch_start(self, pl_module: LightningModule, batch: Any) -> None:
        self._set_mask(pl_module, batch)
        for memel in self.memels.values():
            memel.record_metrics = False

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    # ------------------------------------------------------------------ logging
    def collect_metrics(self) -> dict[str, float]:
        """The last recorded step's metrics as ``{"memel/<tap>/<name>": value}`` plus aggregates."""
        out: dict[str, float] = {}
        totals = {"mono_neurons": 0.0, "neurons": 0.0, "false_kills": 0.0, "kills": 0.0}
        for name in self.tap_names:
            memel = self.memel_for(name)
            metrics = memel.last_metrics
            if not metrics:
                continue
            values = {k: float(v) for k, v in metrics.items()}
            for key in PER_TAP:
                if key in values:
                    out[f"memel/{name}/{key}"] = values[key]
            for key in totals:
                totals[key] += values[key]
        if totals["neurons"] > 0:
            out["memel/mono_ratio"] = totals["mono_neurons"] / totals["neurons"]
            out["memel/fkr"] = totals["false_kills"] / max(totals["kills"], 1.0)
        return out

    def _log_metrics(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._warn_skipped()
        if not trainer.is_global_zero or not trainer.loggers:
            return
        metrics = self.collect_metrics()
        if metrics:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _log_histograms(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for name in self.tap_names:
                sample = self.memel_for(name).last_phi_sample
                if sample is not None and sample.numel() > 0:
                    logger.experiment.add_histogram(f"memel/{name}/phi", sample.float().cpu(), trainer.global_step)

    def _warn_skipped(self) -> None:
        for name in self.tap_names:
            skipped = int(self.memel_for(name).moments.skipped)
            if skipped > self._skipped_seen.get(name, 0):
                warnings.warn(
                    f"tap {name!r}: {skipped} batch(es) with NaN/inf activations so far; their "
                    "statistics updates were skipped",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._skipped_seen[name] = skipped

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "taps": {name: self.memel_for(name).state_dict() for name in self.tap_names},
            "train_batches": self._train_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.tap_names:
            self._apply_state(state_dict)
        else:
            self._pending_state = state_dict  # applied when setup() has built the taps

    def _apply_state(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["taps"]
        missing = [name for name in self.tap_names if name not in saved]
        if missing:
            raise KeyError(f"checkpoint has no MEmeL statistics for taps {missing}; it has {sorted(saved)}")
        for name in self.tap_names:
            memel = self.memel_for(name)
            memel.load_state_dict(_to_device(saved[name], memel.moments.skipped.device))
        self._train_batches = int(state_dict.get("train_batches", 0))


def _loss_multiplier(trainer: Trainer) -> Union[float, Tensor]:
    """The factor Lightning applies to the loss before backward: ``1 / accumulate_grad_batches``
    times the AMP GradScaler's scale (kept as a device tensor: no host sync)."""
    multiplier: Union[float, Tensor] = 1.0 / max(int(trainer.accumulate_grad_batches), 1)
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is not None and scaler.is_enabled():
        scale = getattr(scaler, "_scale", None)  # None until the scaler's first use
        multiplier = multiplier * (scale if scale is not None else scaler.get_scale())
    return multiplier


def _refuse_recomputation(pl_module: nn.Module) -> None:
    """Activation checkpointing re-runs tapped modules during backward: their statistics
    would be merged twice and the recomputed output could differ from the original."""
    for name, module in pl_module.named_modules():
        # Hugging Face models (is_gradient_checkpointing) and timm models (grad_checkpointing)
        if getattr(module, "is_gradient_checkpointing", False) or getattr(module, "grad_checkpointing", False) is True:
            raise ValueError(
                f"{type(module).__name__} at {name or 'the model'!r} has gradient checkpointing on; MEmeL taps "
                "inside recomputed blocks would update their statistics twice per step. Turn it off "
                "(e.g. CausalLM(gradient_checkpointing=False)) while MEmeLCallback is installed"
            )


def _key(tap: str) -> str:
    return tap.replace(".", "/")


def _to_device(state: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()}
