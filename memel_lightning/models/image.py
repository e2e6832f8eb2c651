"""Image classification with any timm model (Swin-T/S/B for the paper's ImageNet runs)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from .optim import adamw, lazy_lambda_lr
from .taps import timm_default_taps

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


# ---------------------------------------------------------------------- checkpoints
IMAGENET22K_CLASSES = 21841
IMAGENET22K_TO_1K = Path(__file__).parent / "resources" / "imagenet22k_to_1k.txt"


def resolve_head_class_map(
    head_class_map: Optional[Union[str, Path]], checkpoint_classes: int, model_classes: int
) -> Optional[Path]:
    """The class-row map to use for a classifier of ``checkpoint_classes`` rows loaded into one of
    ``model_classes``: ``"auto"`` (the default) picks the shipped ImageNet-22k -> 1k map (the
    official Swin release's ``map22kto1k.txt``: row ``i`` of the 1k head is row ``map[i]`` of the
    22k head) exactly when a 21841-class head meets a 1000-class model, as the official Swin
    fine-tuning code does, and otherwise none (the head starts at zero); ``None``/``"none"``
    never maps; a path names a map file.

    Example:
        >>> resolve_head_class_map("auto", 21841, 1000).name
        'imagenet22k_to_1k.txt'
        >>> resolve_head_class_map("auto", 21841, 10) is None
        True
    """
    if head_class_map is None or str(head_class_map).strip().lower() in ("none", "null", ""):
        return None
    if str(head_class_map).strip().lower() == "auto":
        if checkpoint_classes == IMAGENET22K_CLASSES and model_classes == 1000:
            return IMAGENET22K_TO_1K
        return None
    path = Path(head_class_map).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"head_class_map {str(head_class_map)!r} does not exist (a text file of row indices)")
    return path


def load_pretrained_file(
    model: nn.Module,
    path: Union[str, Path],
    head_class_map: Optional[Union[str, Path]] = "auto",
) -> dict[str, list[str]]:
    """Load a local checkpoint (``.pth``/``.safetensors``) into a timm ``model``.

    Accepts timm checkpoints and the official Swin releases (weights under a ``model`` key,
    old block layout, ImageNet-22k head): the state dict is unwrapped (``model``,
    ``state_dict``, ``module.`` prefixes), converted by the model family's timm
    ``checkpoint_filter_fn`` when it has one, and loaded. A classifier whose shape differs
    from the model's is handled as the official Swin fine-tuning code does: a 22k head
    loaded into a 1k model keeps the 22k rows of the 1k classes (``head_class_map="auto"``,
    the shipped map, see :func:`resolve_head_class_map`; or a map file of one checkpoint row
    index per model class); any other mismatch (or ``head_class_map=None``) starts the new
    head at zero. Any other missing or unexpected
    key is an error. Returns ``{"head_reset": [...], "head_mapped": [...]}``.

    Example:
        >>> import tempfile, os
        >>> src = timm.create_model("resnet10t", num_classes=5)
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pth"); torch.save({"model": src.state_dict()}, path)
        >>> dst = timm.create_model("resnet10t", num_classes=3)
        >>> load_pretrained_file(dst, path)["head_reset"]
        ['fc.weight', 'fc.bias']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {str(path)!r} does not exist")
    from timm.models import load_state_dict

    state = load_state_dict(str(path), use_ema=False)
    state = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(filter_fn):
        state = filter_fn(state, model)
    classifier = _classifier_name(model)
    own = model.state_dict()
    report: dict[str, list[str]] = {"head_reset": [], "head_mapped": []}
    for suffix in ("weight", "bias"):
        key = f"{classifier}.{suffix}" if classifier else None
        if key is None or key not in state or key not in own or state[key].shape == own[key].shape:
            continue
        class_map = resolve_head_class_map(head_class_map, state[key].shape[0], own[key].shape[0])
        if class_map is not None:
            rows = torch.tensor([int(line) for line in class_map.read_text().split()], dtype=torch.long)
            if len(rows) != own[key].shape[0]:
                raise ValueError(
                    f"head_class_map {str(class_map)!r} has {len(rows)} indices, the model has "
                    f"{own[key].shape[0]} classes"
                )
            if int(rows.max()) >= state[key].shape[0]:
                raise ValueError(
                    f"head_class_map {str(class_map)!r} names row {int(rows.max())} but the checkpoint's head "
                    f"has {state[key].shape[0]} rows"
                )
            state[key] = state[key][rows]
            report["head_mapped"].append(key)
        else:
            del state[key]
            with torch.no_grad():
                model.get_parameter(key).zero_()
            report["head_reset"].append(key)
    bad_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in report["head_reset"] and not _is_buffer_only(k)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or bad_shape:
        raise RuntimeError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}, shape mismatches {bad_shape[:8]} (is it the same architecture?)"
        )
    model.load_state_dict(state, strict=False)
    return report


def _classifier_name(model: nn.Module) -> Optional[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return name


def _is_buffer_only(key: str) -> bool:
    """Non-learned buffers that official checkpoints drop (timm rebuilds them)."""
    return any(part in key for part in ("relative_position_index", "attn_mask"))


# ---------------------------------------------------------------------- module
class ImageClassifier(pl.LightningModule):
    r"""Any timm classifier, trained with timm's fine-tuning recipe, MEmeL-ready.

    ``self.model = timm.create_model(model_name, pretrained=..., num_classes=...,
    **model_kwargs)``. ``pretrained`` is ``False``, ``True`` (timm's hub weights; needs
    network) or a local ``.pth``/``.safetensors`` file such as the official
    ``swin_tiny_patch4_window7_224_22k.pth`` (see :func:`load_pretrained_file`).

    Training (:mod:`~memel_lightning.models.optim`): AdamW without weight decay on biases,
    norms and the model's ``no_weight_decay()`` parameters (optional ``layer_decay``);
    per-step learning rate with a linear warm-up from ``warmup_lr`` to ``lr`` over
    ``warmup_epochs`` then a cosine decay to ``min_lr``:

        t < W:  lr_t = warmup_lr + (lr - warmup_lr) * t / W
        t >= W: lr_t = min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2

    With ``lr_base_batch_size`` set (512 in the Swin recipe) ``lr``, ``warmup_lr`` and
    ``min_lr`` are per that batch size and scaled linearly by the global batch (per-device
    batch x devices x nodes x gradient accumulation), as the official Swin code does.
    Loss: cross-entropy with ``label_smoothing``; with ``mixup_alpha``/``cutmix_alpha`` > 0,
    timm's ``Mixup`` mixes each training batch and the loss is soft-target cross-entropy
    (smoothing inside the mixed targets). Logs ``train_loss``, ``lr``, ``val_loss``,
    ``val_acc`` (top-1) and ``val_acc_top5``.

    :meth:`memel_taps` gives docs/method.md §6's placement
    (:func:`~memel_lightning.models.taps.timm_default_taps`): for
    Swin-T ``model.layers.2.blocks.1`` .. ``.4``, for Swin-S/B ``.7`` .. ``.10``.

    Example:
        >>> m = ImageClassifier(num_classes=10, model_kwargs=dict(embed_dim=8, num_heads=(1, 1, 1, 1),
        ...     img_size=32, patch_size=2, window_size=4, in_chans=1))
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
        >>> m.memel_taps()[0]
        'model.layers.2.blocks.1'
    """

    def __init__(
        self,
        model_name: str = "swin_tiny_patch4_window7_224",
        pretrained: Union[bool, str] = False,
        num_classes: int = 1000,
        model_kwargs: Optional[dict[str, Any]] = None,
        head_class_map: Optional[str] = "auto",
        lr: float = 2e-5,
        warmup_lr: float = 2e-8,
        min_lr: float = 2e-7,
        lr_base_batch_size: Optional[int] = None,
        weight_decay: float = 1e-8,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        layer_decay: Optional[float] = None,
        warmup_epochs: float = 5.0,
        warmup_steps: Optional[int] = None,
        scheduler: str = "cosine",
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"scheduler must be 'cosine' or 'constant', got {scheduler!r}")
        self.model = build_timm_model(model_name, pretrained, num_classes, model_kwargs, head_class_map)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                mode=mixup_mode,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro")
        self.val_acc_top5 = MulticlassAccuracy(num_classes=num_classes, top_k=min(5, num_classes), average="micro")
        self.effective_lr: Optional[dict[str, float]] = None

    # -------------------------------------------------------------- MEmeL
    def memel_taps(self) -> list[str]:
        return timm_default_taps(self.model, prefix="model.")

    def timm_data_config(self) -> dict[str, Any]:
        """timm's data config (input size, interpolation, mean, std, crop) of this model."""
        from timm.data import resolve_data_config

        return resolve_data_config({}, model=self.model)

    # -------------------------------------------------------------- steps
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def memel_labels(self, batch: tuple[Tensor, Tensor]) -> Optional[Tensor]:
        """Feature labels for the labelled False Killing Rate: each image's class (under
        mixup/cutmix, the class of the image the mix starts from)."""
        return batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.mixup is not None:
            if x.shape[0] % 2:
                raise ValueError(f"mixup/cutmix need an even batch size, got {x.shape[0]} (use drop_last)")
            x, soft = self.mixup(x, y)
            logits = self(x)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
        self.log("train_loss", loss, prog_bar=True)
        if self._trainer is not None and self._trainer.optimizers:
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits.float(), y), prog_bar=True, sync_dist=True)
        self.val_acc(logits, y)
        self.val_acc_top5(logits, y)
        self.log("val_acc", self.val_acc, prog_bar=True)
        self.log("val_acc_top5", self.val_acc_top5)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(-1)

    # -------------------------------------------------------------- optimisation
    def global_batch_size(self) -> int:
        """Per-device train batch x devices x nodes x gradient accumulation.

        The per-device batch is the data module's ``batch_size`` (else the train loader's,
        if Lightning has built it): asking for the loader here would build it before a
        resumed run's loop state is restored.
        """
        trainer = self.trainer
        per_device = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
        if per_device is None:
            per_device = getattr(trainer.train_dataloader, "batch_size", None)
        if per_device is None:
            raise ValueError("lr_base_batch_size is set but the train batch size cannot be found")
        return int(per_device) * trainer.world_size * trainer.accumulate_grad_batches

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        lr, warmup_lr, min_lr = hp.lr, hp.warmup_lr, hp.min_lr
        if self._trainer is not None and hp.lr_base_batch_size:
            scale = self.global_batch_size() / hp.lr_base_batch_size
            lr, warmup_lr, min_lr = lr * scale, warmup_lr * scale, min_lr * scale
        self.effective_lr = {"lr": lr, "warmup_lr": warmup_lr, "min_lr": min_lr}
        optimizer = adamw(self.model, lr=lr, weight_decay=hp.weight_decay, betas=hp.betas, eps=hp.eps,
                          layer_decay=hp.layer_decay)
        if hp.scheduler == "constant" or self._trainer is None:
            return optimizer

        def lengths() -> tuple[int, int]:  # asked at the first step, after a resume's loop state is back
            trainer = self.trainer
            total = int(trainer.estimated_stepping_batches)
            if hp.warmup_steps is not None:
                return int(hp.warmup_steps), total
            steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            return max(1 if hp.warmup_epochs > 0 else 0, int(hp.warmup_epochs * steps_per_epoch)), total

        def record(warmup: int, total: int) -> None:
            self.effective_lr.update(warmup_steps=warmup, total_steps=total)

        warms_up = (hp.warmup_steps or 0) > 0 if hp.warmup_steps is not None else hp.warmup_epochs > 0
        sched = lazy_lambda_lr(optimizer, lengths, "cosine", start_factor=warmup_lr / lr, end_factor=min_lr / lr,
                               warms_up=warms_up, on_resolve=record)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_timm_model(
    model_name: str,
    pretrained: Union[bool, str] = False,
    num_classes: int = 1000,
    model_kwargs: Optional[dict[str, Any]] = None,
    head_class_map: Optional[str] = "auto",
) -> nn.Module:
    """``timm.create_model`` with ``pretrained`` as False, True (hub) or a local file.

    Example:
        >>> build_timm_model("resnet10t", num_classes=3).fc.out_features
        3
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("true", "false", ""):
        pretrained = pretrained.strip().lower() == "true"
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r}: no such checkpoint file (expected a .pth/.safetensors file, e.g. "
                "the official swin_tiny_patch4_window7_224_22k.pth); use pretrained: false to start from scratch"
            )
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
        load_pretrained_file(model, path, head_class_map=head_class_map)
        return model
    if pretrained:
        try:
            return timm.create_model(model_name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as err:  # offline, no hub access, unknown tag...
            raise RuntimeError(
                f"could not fetch pretrained weights for {model_name!r} from the hub ({type(err).__name__}: {err}). "
                "Offline? Download the checkpoint elsewhere and pass its path: pretrained: /path/to/weights.pth"
            ) from err
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
