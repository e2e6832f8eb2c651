"""MEmeLCallback: install the inhibition core on any LightningModule by layer name."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from .inhibition import MEmeL, MEmeLConfig, MEmeLConfigError, TapSet, attach
from .inhibition import TapNotFoundError, resolve_taps  # noqa: F401  (re-exported: older imports)
from .inhibition.memel import PHI_SAMPLE
from .inhibition.metrics import FKR, METRICS, REG_LOSS
from .monitoring import MEMEL_CHARTS, TrainerBoard, short_labels

STATE_VERSION = 2
PROGRESS_BAR = ("memel/mono_ratio", "memel/fkr")  # overall ratio; the labelled FKR when there is one


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

    On the trainer's logging steps (the batches and step numbers at which Lightning logs
    ``train_loss``; every ``log_every_n_steps`` batches on the same axis when that is set)
    and at the last training batch of fit, it logs the metrics of docs/method.md §6 as
    ``memel/<label>/<metric>`` (``label``: the tap's short name, :attr:`labels`) plus
    ``memel/mono_ratio`` and ``memel/kill_concentration`` over all taps, to the trainer's
    loggers (rank zero) and into ``trainer.callback_metrics`` (so
    ``ModelCheckpoint(monitor="memel/mono_ratio")`` works); the progress bar shows
    ``memel/mono_ratio`` (and ``memel/fkr`` when labelled). TensorBoard loggers also get
    the dashboard of docs/monitoring.md: a Custom Scalars layout, a layer x step
    ``mono_ratio`` heatmap, ``log10(phi)`` histograms with the ``tau_report`` line (at
    the first inhibited batch, every ``hist_every_n_steps`` and at the last batch) and
    HParams with the MEmeL settings and final metrics (Lightning's ``hp_metric``
    placeholder is turned off). With ``sync_stats`` the batch moments are all-reduced
    across DDP ranks and the logged metrics are those of the global batch (one
    collective per logged step). The statistics are saved in the checkpoint and restored
    on resume. Hooks are removed at teardown.

    Args:
        taps: glob patterns over the module names, or ``default`` (the module's ``memel_taps()``).
        memel: the settings of every tap (:class:`~memel_lightning.inhibition.MEmeLConfig`).
        log_every_n_steps: training batches between logged steps; default: the trainer's.
        hist_every_n_steps: training batches between log10(phi) histograms (TensorBoard).
        sync_stats: all-reduce statistics and metric states across data-parallel ranks.
        tap_labels: tap name -> label in the logged tags; default: the names without the
            parts all taps share (``model.layers.2.blocks.0`` -> ``blocks.0``).
        image_every_n_steps: steps between mono_ratio heatmap images (TensorBoard).
        kills_tap: a tap (name or label) whose neuron x step kill map is drawn too.

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
        tap_labels: Optional[Mapping[str, str]] = None,
        image_every_n_steps: int = 200,
        kills_tap: Optional[str] = None,
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1 (or None: the trainer's), got {log_every_n_steps}")
        if hist_every_n_steps < 1:
            raise ValueError(f"hist_every_n_steps must be >= 1, got {hist_every_n_steps}")
        if image_every_n_steps < 1:
            raise ValueError(f"image_every_n_steps must be >= 1, got {image_every_n_steps}")
        self.tap_labels = dict(tap_labels or {})
        self.image_every_n_steps = int(image_every_n_steps)
        self.kills_tap = kills_tap
        self.labels: dict[str, str] = {}  # tap -> label in the logged tags (set at setup)
        self.board: Optional[TrainerBoard] = None
        self._histogram = False
        self._first_inhibited = False
        self._final_batch = False
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
        self.labels = short_labels(self.tap_names, self.tap_labels)
        if self.board is None or self.board.dashboard.labels != self.labels:
            self.board = TrainerBoard(self.labels, self.memel, self.memel.tau_report, self.image_every_n_steps,
                                      self.kills_tap)
        if trainer is not None:
            self.board.setup(trainer)
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

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.board.start(trainer, self._charts(pl_module))

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._set_inputs(pl_module, batch)
        step = log_step(trainer)
        self._record = (step + 1) % self.log_every_n_steps == 0  # Lightning's own rule: the same steps
        self._final_batch = _is_final_batch(trainer, batch_idx)
        # phi at the first inhibited batch, every hist_every_n_steps and at the last batch
        self._first_inhibited = any(m.step == self.memel.late_start for m in self.memels.values())
        self._histogram = (step + 1) % self.hist_every_n_steps == 0 or self._first_inhibited or self._final_batch
        self._tapset.begin_step(record=self._record or self._final_batch, histogram=self._histogram,
                                loss_scale=_loss_scale(trainer))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._train_batches += 1
        result = self._tapset.end_step()
        self._tapset.set_inputs()
        if not result:
            return
        if self._record:
            self._warn_skipped()  # on the logging cadence only (reported with the scalars)
        step = log_step(trainer)
        if self._record or self._final_batch:
            logged = self._log_scalars(trainer, pl_module, result, step)
            self.board.step(trainer, step, result, logged)
            hook = getattr(pl_module, "memel_step_end", None)
            if callable(hook):
                hook(result)
        if self._histogram:
            self._log_phi(trainer, result, step)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.board.after_validation(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.board.finish(trainer)

    def _eval_batch_start(self, pl_module: LightningModule, batch: Any) -> None:
        self._set_inputs(pl_module, batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch_start(pl_module, batch)

    # ------------------------------------------------------------------ logging
    def scalars(self, result: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The logged scalars of a ``TapSet.end_step`` result: ``memel/<label>/<metric>``
        per tap (``label``: :attr:`labels`) and the aggregates ``memel/<metric>``."""
        out: dict[str, Tensor] = {}
        for key, value in result.items():
            tap, _, metric = key.rpartition("/")
            if metric in METRICS:
                out[f"memel/{self.labels[tap]}/{metric}" if tap else f"memel/{metric}"] = value
        return out

    def _charts(self, pl_module: LightningModule) -> list[str]:
        """The Custom Scalars charts this run can fill: fkr needs labels, reg_loss the regulariser."""
        skip = set()
        if not callable(getattr(pl_module, "memel_labels", None)):
            skip.add(FKR)
        if self.memel.strategy != "regularize":
            skip.add(REG_LOSS)
        return [m for m in MEMEL_CHARTS if m not in skip]

    def _log_scalars(
        self, trainer: Trainer, pl_module: LightningModule, result: Mapping[str, Tensor], step: int
    ) -> list[str]:
        """Log the step's scalars at ``step``; their tags."""
        scalars = self.scalars(result)
        if not scalars:
            return []
        values = {k: float(v) for k, v in scalars.items()}  # one host sync per logged step
        for name, value in values.items():
            # logger=False: the loggers get the values below, at Lightning's step for this batch;
            # self.log puts them in trainer.callback_metrics (ModelCheckpoint, EarlyStopping)
            # and the overall mono_ratio (fkr when labelled) on the progress bar
            pl_module.log(name, value, on_step=True, on_epoch=False, logger=False, batch_size=1,
                          prog_bar=name in PROGRESS_BAR)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
        return list(values)

    def _log_phi(self, trainer: Trainer, result: Mapping[str, Tensor], step: int) -> None:
        samples = {tap: result.get(f"{tap}/{PHI_SAMPLE}") for tap in self.tap_names}
        when = " (start of inhibition)" if self._first_inhibited else " (end of training)" if self._final_batch else ""
        self.board.phi(trainer, step, samples, result, f"step {step}{when}")

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


def log_step(trainer: Trainer) -> int:
    """The step at which Lightning logs the current training batch's metrics (its
    optimizer steps before this batch: ``train_loss`` is drawn there) and so does
    MEmeLCallback. In ``on_train_batch_end`` it is ``trainer.global_step - 1`` for a
    plain optimizer step; it differs with gradient accumulation or skipped steps."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)  # Lightning's own counter


def _is_final_batch(trainer: Trainer, batch_idx: int) -> bool:
    """Whether this is the last training batch of fit, as far as the limits tell
    (max_steps, or the last batch of the last epoch; an early stop cannot be foreseen)."""
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step + 1 >= trainer.max_steps:
        return True
    epochs = trainer.max_epochs
    last_epoch = epochs is not None and epochs >= 0 and trainer.current_epoch + 1 >= epochs
    return bool(last_epoch and batch_idx + 1 >= trainer.num_training_batches)


def _refuse_recomputation(pl_module: nn.Module) -> None:
    """Activation checkpointing re-runs tapped modules during backward: their statistics
    would be merged twice and the recomputed output could differ from the original."""
    for name, module in pl_module.named_modules():
        # Hugging Face modules set ``gradient_checkpointing`` (what their deprecated
        # ``is_gradient_checkpointing`` property reads); timm models set ``grad_checkpointing``.
        if getattr(module, "gradient_checkpointing", False) is True or getattr(module, "grad_checkpointing", False) is True:
            raise ValueError(
                f"{type(module).__name__} at {name or 'the model'!r} has gradient checkpointing on; MEmeL taps "
                "inside recomputed blocks would update their statistics twice per step. Turn it off "
                "(e.g. CausalLM(gradient_checkpointing=False)) while MEmeLCallback is installed"
            )


def _key(tap: str) -> str:
    return tap.replace(".", "/")


def _to_device(state: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in state.items()}
