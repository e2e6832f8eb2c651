"""MEmeLCallback: install the inhibition core on any LightningModule by layer name."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from .inhibition import MEmeL, MEmeLConfig, MEmeLConfigError, TapSet, attach
from .inhibition import TapNotFoundError, resolve_taps  # noqa: F401  (re-exported: older imports)
from .inhibition.memel import PHI_SAMPLE
from .inhibition.metrics import METRICS

STATE_VERSION = 2


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


def as_config(memel: Union[MEmeLConfig, Mapping[str, Any], None]) -> MEmeLConfig:
    """A :class:`MEmeLConfig` from a config or a plain dict of its fields."""
    if memel is None:
        return MEmeLConfig()
    if isinstance(memel, MEmeLConfig):
        return memel
    if isinstance(memel, Mapping):
        return MEmeLConfig().replace(**dict(memel))
    raise MEmeLConfigError(f"memel must be a MEmeLConfig or a mapping of its settings, got {type(memel).__name__}")


class MEmeLCallback(Callback):
    r"""Monosemantic neuron inhibition (MEmeL / L2E) on any LightningModule.

    For every module matched by ``taps`` (glob patterns over ``named_modules()``, or
    ``"default"`` to use the LightningModule's ``memel_taps()``) one
    :class:`~memel_lightning.inhibition.MEmeL` with the settings ``memel``
    (:class:`~memel_lightning.inhibition.MEmeLConfig`) is attached
    (:func:`~memel_lightning.inhibition.attach`): its forward hook replaces the module's
    output (the first element of a tuple output). A module called several times per
    batch (a recurrent cell) shares one MEmeL, and the step's metrics cover all calls.

    The callback only schedules and logs. Every training batch is one MEmeL step
    (``TapSet.begin_step`` / ``end_step``): ``late_start`` counts training batches.
    Per batch the LightningModule may give ``memel_mask(batch)`` (bool or 0/1, shape a
    prefix of each tap's output, e.g. ``(B, L)``: padding is never in the statistics nor
    selected) and ``memel_labels(batch)`` (one label per item, for the labelled metrics).
    After a recorded step it calls ``memel_step_end(metrics)`` if the module defines it,
    with the step's ``{"<tap>/<key>": tensor}`` (e.g. ``"encoder/kills_per_neuron"``).

    Every ``log_every_n_steps`` training batches (default: the trainer's
    ``log_every_n_steps``; the first batch is logged) it logs the metrics of
    docs/method.md §6 as ``memel/<tap>/<metric>`` plus ``memel/mono_ratio`` and
    ``memel/kill_concentration`` over all taps, to the trainer's loggers (rank zero, at
    ``trainer.global_step``) and into ``trainer.callback_metrics`` (so
    ``ModelCheckpoint(monitor="memel/mono_ratio")`` works), and a histogram of phi every
    ``hist_every_n_steps`` (TensorBoard). With ``sync_stats`` the batch moments are
    all-reduced across DDP ranks and the logged metrics are those of the global batch
    (one collective per logged step). The statistics are saved in the checkpoint and
    restored on resume. Hooks are removed at teardown.

    Args:
        taps: glob patterns over the module names, or ``default`` (the module's ``memel_taps()``).
        memel: the settings of every tap (:class:`~memel_lightning.inhibition.MEmeLConfig`).
        log_every_n_steps: training batches between logged steps; default: the trainer's.
        hist_every_n_steps: training batches between phi histograms (TensorBoard).
        sync_stats: all-reduce statistics and metric states across data-parallel ranks.

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
        memel: MEmeLConfig = MEmeLConfig(),
        log_every_n_steps: Optional[int] = None,
        hist_every_n_steps: int = 500,
        sync_stats: bool = True,
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1 (or None: the trainer's), got {log_every_n_steps}")
        if hist_every_n_steps < 1:
            raise ValueError(f"hist_every_n_steps must be >= 1, got {hist_every_n_steps}")
        self.taps = taps if isinstance(taps, str) else list(taps)
        self.memel = as_config(memel)
        self._log_every = log_every_n_steps
        self.hist_every_n_steps = int(hist_every_n_steps)
        self.sync_stats = bool(sync_stats)
        self.memels = nn.ModuleDict()  # keys: tap names with '.' replaced (ModuleDict forbids dots)
        self.tap_names: list[str] = []
        self._tapset: Optional[TapSet] = None
        self._pending_state: Optional[dict[str, Any]] = None
        self._train_batches = 0
        self._record = False
        self._skipped_seen: dict[str, int] = {}
        self._trainer_every = 50

    @property
    def state_key(self) -> str:
        return self._generate_state_key(taps=str(self.taps), memel=str(sorted(self.memel.as_dict().items())))

    @property
    def log_every_n_steps(self) -> int:
        """Training batches between logged steps (the trainer's unless overridden)."""
        return self._log_every if self._log_every is not None else self._trainer_every

    @property
    def train_batches(self) -> int:
        """Training batches seen (saved in the checkpoint)."""
        return self._train_batches

    # ------------------------------------------------------------------ install
    def memel_for(self, tap: str) -> MEmeL:
        """The MEmeL attached to module ``tap``."""
        return self.memels[_key(tap)]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer is not None:
            self._trainer_every = max(int(getattr(trainer, "log_every_n_steps", 50) or 50), 1)
        patterns = default_taps(pl_module) if self.taps == "default" else self.taps
        self._remove_hooks()
        _refuse_recomputation(pl_module)
        tapset = attach(pl_module, patterns, self._build)
        if self.tap_names and tapset.names != self.tap_names:
            tapset.remove()
            raise ValueError(f"taps changed between runs: {self.tap_names} -> {tapset.names}")
        self.tap_names = tapset.names
        self._tapset = tapset
        self.memels.to(pl_module.device)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def _build(self, name: str) -> MEmeL:
        if _key(name) not in self.memels:  # a second setup (fit, then test) keeps the statistics
            self.memels[_key(name)] = MEmeL(self.memel, name=name, sync_dist=self.sync_stats)
        return self.memel_for(name)

    def _remove_hooks(self) -> None:
        if self._tapset is not None:
            self._tapset.remove()
        self._tapset = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        for memel in self.memels.values():
            if memel._in_step:
                memel.close_step()
        self._remove_hooks()

    # ------------------------------------------------------------------ per batch
    def _set_inputs(self, pl_module: LightningModule, batch: Any) -> None:
        if self._tapset is None:
            return
        get_mask = getattr(pl_module, "memel_mask", None)
        get_labels = getattr(pl_module, "memel_labels", None)
        self._tapset.set_inputs(
            mask=get_mask(batch) if callable(get_mask) else None,
            labels=get_labels(batch) if callable(get_labels) else None,
        )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._set_inputs(pl_module, batch)
        step = self._train_batches
        self._record = step % self.log_every_n_steps == 0
        histogram = step % self.hist_every_n_steps == 0
        self._tapset.begin_step(record=self._record, histogram=histogram, loss_scale=_loss_scale(trainer))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._train_batches += 1
        result = self._tapset.end_step()
        self._tapset.set_inputs()
        if not result:
            return
        self._warn_skipped()
        if self._record:
            self._log_scalars(trainer, pl_module, result)
            hook = getattr(pl_module, "memel_step_end", None)
            if callable(hook):
                hook(result)
        self._log_histograms(trainer, result)

    def _eval_batch_start(self, pl_module: LightningModule, batch: Any) -> None:
        self._set_inputs(pl_module, batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    # ------------------------------------------------------------------ logging
    @staticmethod
    def scalars(result: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The logged scalars of a ``TapSet.end_step`` result, as ``memel/<name>``."""
        out: dict[str, Tensor] = {}
        for key, value in result.items():
            metric = key.rsplit("/", 1)[-1]
            if metric in METRICS:
                out[f"memel/{key}"] = value
        return out

    def _log_scalars(self, trainer: Trainer, pl_module: LightningModule, result: Mapping[str, Tensor]) -> None:
        scalars = self.scalars(result)
        if not scalars:
            return
        values = {k: float(v) for k, v in scalars.items()}  # one host sync per logged step
        for name, value in values.items():
            # logger=False: the trainer's loggers get the values below, at this step;
            # self.log puts them in trainer.callback_metrics (ModelCheckpoint, EarlyStopping)
            pl_module.log(name, value, on_step=True, on_epoch=False, logger=False, batch_size=1)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    def _log_histograms(self, trainer: Trainer, result: Mapping[str, Tensor]) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            for name in self.tap_names:
                sample = result.get(f"{name}/{PHI_SAMPLE}")
                if sample is not None and sample.numel() > 0:
                    logger.experiment.add_histogram(f"memel/{name}/phi", sample.float().cpu(), trainer.global_step)

    def _warn_skipped(self) -> None:
        for name in self.tap_names:
            skipped = int(self.memel_for(name).moments.skipped)  # the same on every rank when synced
            if skipped > self._skipped_seen.get(name, 0):
                rank_zero_warn(
                    f"tap {name!r}: {skipped} batch(es) with NaN/inf activations so far; their "
                    "statistics updates were skipped",
                    category=RuntimeWarning,
                )
                self._skipped_seen[name] = skipped

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "taps": {name: self.memel_for(name).state_dict() for name in self.tap_names},
            "train_batches": self._train_batches,
        }

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning restores a callback's state by its state_key (taps and every memel
        # setting) and silently skips a callback it does not find: refuse instead of
        # resuming with fresh statistics.
        states = checkpoint.get("callbacks") or {}
        theirs = [str(k) for k in states if str(k).startswith(type(self).__name__)]
        if theirs and self.state_key not in states:
            raise ValueError(
                f"the checkpoint holds MEmeLCallback statistics under {theirs}, not under this callback's key "
                f"{self.state_key!r}: it was written with other taps or memel settings, or by an older version "
                "of MEmeLCallback (whose key listed only the settings given); resume with the same settings, "
                "or start a new run from the weights only"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "taps" not in state_dict:
            raise KeyError(
                "the checkpoint's MEmeLCallback state has no 'taps' entry (keys: "
                f"{sorted(state_dict)}); it was not written by this version of MEmeLCallback"
            )
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


def _loss_scale(trainer: Trainer) -> Union[float, Tensor]:
    """The factor Lightning applies to the loss before backward: ``1 / accumulate_grad_batches``
    times the AMP GradScaler's scale (kept as a device tensor: no host sync)."""
    scale: Union[float, Tensor] = 1.0 / max(int(trainer.accumulate_grad_batches), 1)
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is not None and scaler.is_enabled():
        amp = getattr(scaler, "_scale", None)  # None until the scaler's first use
        scale = scale * (amp if amp is not None else scaler.get_scale())
    return scale


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
