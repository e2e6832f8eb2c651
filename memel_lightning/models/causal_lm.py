"""GPT-NeoX (Pythia) causal language model for pre-training with L2E inhibition."""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from .hf_loading import from_pretrained_quietly
from .optim import adamw, lazy_lambda_lr, warmup_decay, warmup_steps
from .taps import gpt_neox_mlp_taps, middle_blocks

# Published Pythia shapes (Biderman et al. 2023, Table 1 / the EleutherAI configs):
# layers, model width, heads, and the maximum learning rate of the Pythia recipe.
# All use vocab 50304 (50277 BPE tokens padded to a multiple of 128), rotary on 25 % of
# each head's dimensions, 2048 positions, parallel attention + MLP residual, GELU,
# MLP width 4 * d, untied input/output embeddings.
PRESETS: dict[str, dict[str, Any]] = {
    "pythia-70m": dict(num_hidden_layers=6, hidden_size=512, num_attention_heads=8, lr=1e-3),
    "pythia-160m": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, lr=6e-4),
    "pythia-410m": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, lr=3e-4),
    "pythia-1b": dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=8, lr=3e-4),
    "pythia-2.8b": dict(num_hidden_layers=32, hidden_size=2560, num_attention_heads=32, lr=1.6e-4),
    # tiny shapes for tests and the CPU demo
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, lr=1e-3,
                 vocab_size=512, max_position_embeddings=256),
    "tiny-4l": dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, lr=1e-3,
                    vocab_size=4096, max_position_embeddings=512),
}
PYTHIA_COMMON: dict[str, Any] = dict(
    vocab_size=50304,
    max_position_embeddings=2048,
    rotary_pct=0.25,
    rotary_emb_base=10000,
    use_parallel_residual=True,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    tie_word_embeddings=False,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    bos_token_id=0,
    eos_token_id=0,
)


# Where the taps go (L2E's layer ablation, Table 5; docs/l2e.md). The paper names the
# settings "Mid-2" (its preferred one), "Mid-1/3" and "Top-Bot"; the layers of the last
# two are our reading (the text available to us does not list them).
PLACEMENTS = ("mid2", "mid_third", "top_bottom", "all")
# L2E's best inhibition ratio per model size (docs/l2e.md): 70M 1 %, 410M 2 %, 2.8B 3 %.
TARGET_RATIOS: dict[str, float] = {"pythia-70m": 0.01, "pythia-410m": 0.02, "pythia-2.8b": 0.03}
DEFAULT_TARGET_RATIO = 0.02


def placement_layers(placement: str, num_layers: int) -> list[int]:
    """The layer indices a placement preset taps in a stack of ``num_layers``.

    ``mid2``: the two middle layers; ``mid_third``: the middle third (``round(n / 3)``
    layers, at least one); ``top_bottom``: the first and the last layer; ``all``: every layer.

    Example:
        >>> placement_layers("mid2", 6), placement_layers("mid2", 32), placement_layers("mid_third", 12)
        ([2, 3], [15, 16], [4, 5, 6, 7])
        >>> placement_layers("top_bottom", 24), placement_layers("all", 3)
        ([0, 23], [0, 1, 2])
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {list(PLACEMENTS)}, got {placement!r}")
    if placement == "mid2":
        return middle_blocks(num_layers, 2)
    if placement == "mid_third":
        return middle_blocks(num_layers, max(1, round(num_layers / 3)))
    if placement == "top_bottom":
        return sorted({0, num_layers - 1})
    return list(range(num_layers))


def gpt_neox_config(name: str, **overrides: Any):
    """A ``GPTNeoXConfig`` for preset ``name`` (see :data:`PRESETS`), with ``overrides``.

    Example:
        >>> cfg = gpt_neox_config("pythia-410m")
        >>> cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
        (24, 1024, 16, 4096)
    """
    from transformers import GPTNeoXConfig

    if name not in PRESETS:
        raise ValueError(f"unknown GPT-NeoX preset {name!r}; choose one of {sorted(PRESETS)} or a checkpoint folder")
    kwargs = {**PYTHIA_COMMON, **{k: v for k, v in PRESETS[name].items() if k != "lr"}}
    kwargs.update(overrides)
    kwargs.setdefault("intermediate_size", 4 * kwargs["hidden_size"])
    return GPTNeoXConfig(**kwargs)


class CausalLM(pl.LightningModule):
    """A GPT-NeoX (Pythia) causal language model trained on next-token prediction.

    ``model`` is a preset name (``pythia-70m``, ``pythia-160m``, ``pythia-410m``,
    ``pythia-1b``, ``pythia-2.8b`` with the published shapes, ``tiny``/``tiny-4l`` for
    tests) built from scratch, or a local folder holding a Hugging Face checkpoint
    (``config.json`` + weights) that is loaded. ``config_overrides`` changes any
    ``GPTNeoXConfig`` field of a preset (e.g. ``vocab_size`` to match a tokenizer
    trained on the corpus).

    Batches are ``{"input_ids": (B, L + 1)}`` packed token windows (see
    :class:`~memel_lightning.data.TextDataModule`): the model reads ``L`` tokens and
    predicts the ``L`` next ones. Logs ``train_loss`` (mean token cross-entropy),
    ``val_loss`` and ``val_ppl = exp(val_loss)`` over the validation tokens.

    Optimisation follows the Pythia recipe (:mod:`~memel_lightning.models.optim`): AdamW
    (betas 0.9/0.95, eps 1e-8, weight decay 0.01 on matrices only), linear warm-up from 0
    over ``warmup_ratio`` of the steps (at least one), then cosine decay to
    ``min_lr_ratio * lr``; ``lr`` defaults to the preset's Pythia value. The schedule length
    is ``max_steps`` or the trainer's estimate (taken at the first optimiser step).

    :meth:`memel_taps` returns the MLP activations (``model.gpt_neox.layers.<i>.mlp.act``,
    output ``(B, L, 4d)``: the neurons L2E inhibits) of the layers of ``placement``
    (:func:`placement_layers`: ``mid2``, the two middle layers, by default as in the
    paper; ``mid_third``, ``top_bottom``, ``all``); use ``reduce_dims: [0]`` so every token
    is a sample and every MLP unit a neuron. :attr:`memel_target_ratio` is the paper's best
    inhibition ratio for the preset's size (70M 1 %, 410M 2 %, 2.8B 3 %; else 2 %), the
    value the configs give ``memel.target_ratio``. When the batches carry
    ``"feature_labels"`` (``TextDataModule(code_languages=True)``), :meth:`memel_labels`
    passes each input token's label to the taps for the labelled False Killing Rate.
    Under Lightning's ``ModelParallelStrategy`` :meth:`configure_model` shards every layer
    with FSDP2 (:mod:`memel_lightning.sharding`).

    Example:
        >>> lm = CausalLM("tiny")
        >>> lm.memel_taps()
        ['model.gpt_neox.layers.0.mlp.act', 'model.gpt_neox.layers.1.mlp.act']
        >>> batch = {"input_ids": torch.randint(0, 512, (2, 17))}
        >>> lm._loss(batch).shape   # mean next-token cross-entropy
        torch.Size([])
    """

    def __init__(
        self,
        model: str = "pythia-70m",
        config_overrides: Optional[Mapping[str, Any]] = None,
        lr: Optional[float] = None,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        warmup_ratio: float = 0.01,
        min_lr_ratio: float = 0.1,
        max_steps: Optional[int] = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        placement: str = "mid2",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {list(PLACEMENTS)}, got {placement!r}")
        from transformers import GPTNeoXForCausalLM

        overrides = dict(config_overrides or {})
        if os.path.isdir(model):
            self.model = from_pretrained_quietly(
                GPTNeoXForCausalLM.from_pretrained, model, "CausalLM", local_files_only=True,
                attn_implementation=attn_implementation, **overrides,
            )
            default_lr = 3e-4
        else:
            config = gpt_neox_config(model, **overrides)
            config._attn_implementation = attn_implementation
            self.model = GPTNeoXForCausalLM(config)
            default_lr = PRESETS[model]["lr"]
        # transformers 5 returns from_pretrained models in eval mode and Lightning keeps each
        # submodule's mode: without this, dropout and the MEmeL taps would be off in training.
        self.model.train(self.training)
        self.lr = float(lr) if lr is not None else default_lr
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self._val_sum: Optional[Tensor] = None
        self._val_count: Optional[Tensor] = None

    # ------------------------------------------------------------------ taps
    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def memel_taps(self) -> list[str]:
        """The MLP activations of the layers of ``placement``."""
        taps = gpt_neox_mlp_taps(self.num_layers)
        return [taps[i] for i in placement_layers(self.hparams.placement, self.num_layers)]

    @property
    def memel_target_ratio(self) -> float:
        """L2E's best inhibition ratio for this preset's size (docs/l2e.md)."""
        return TARGET_RATIOS.get(str(self.hparams.model), DEFAULT_TARGET_RATIO)

    def memel_labels(self, batch: Mapping[str, Tensor]) -> Optional[Tensor]:
        """The feature label of every input token ``(B, L)`` when the batch has them."""
        labels = batch.get("feature_labels") if isinstance(batch, Mapping) else None
        return None if labels is None else labels[:, :-1]

    def configure_model(self) -> None:
        from ..sharding import shard_for_strategy

        shard_for_strategy(self, self.model, self.model.gpt_neox.layers)

    # ------------------------------------------------------------------ steps
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        vocab = getattr(dm, "vocab_size", None)
        if vocab is not None and vocab > self.vocab_size:
            raise ValueError(
                f"the tokenizer has {vocab} tokens but the model's vocab_size is {self.vocab_size}; set "
                f"model.config_overrides.vocab_size >= {vocab} (e.g. {128 * math.ceil(vocab / 128)})"
            )

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def _loss(self, batch: Mapping[str, Tensor], reduction: str = "mean") -> Tensor:
        ids = batch["input_ids"]
        if ids.dim() != 2 or ids.shape[1] < 2:
            raise ValueError(f"input_ids must be (B, L + 1) with L >= 1, got {tuple(ids.shape)}")
        logits = self(ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction=reduction)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        losses = self._loss(batch, reduction="none")
        if self._val_sum is None:
            self.on_validation_epoch_start()
        self._val_sum += losses.sum(dtype=torch.float64)
        self._val_count += losses.numel()

    def on_validation_epoch_end(self) -> None:
        total, count = self._val_sum, self._val_count
        if total is None:
            return
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        loss = (total / count.clamp(min=1)).float()
        self.log("val_loss", loss, prog_bar=True, rank_zero_only=True)
        self.log("val_ppl", loss.exp(), prog_bar=True, rank_zero_only=True)
        self._val_sum = self._val_count = None

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    # ------------------------------------------------------------------ optimiser
    def _total_steps(self) -> int:
        if self.hparams.max_steps:
            return int(self.hparams.max_steps)
        try:
            return max(1, int(self.trainer.estimated_stepping_batches))
        except Exception:  # no trainer, or an infinite loader
            return 1

    def lr_factor(self, step: int, total: int) -> float:
        """Warm-up then cosine decay to ``min_lr_ratio``: the multiplier of ``lr`` at ``step``."""
        warmup = warmup_steps(self.hparams.warmup_ratio, total)
        return warmup_decay(step, warmup, total, "cosine", end_factor=self.hparams.min_lr_ratio)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = adamw(self, lr=self.lr, weight_decay=hp.weight_decay, betas=hp.betas, eps=hp.adam_eps,
                          fused=self.device.type == "cuda")

        def lengths() -> tuple[int, int]:  # asked at the first step, after a resume's loop state is back
            total = self._total_steps()
            return warmup_steps(hp.warmup_ratio, total), total

        scheduler = lazy_lambda_lr(optimizer, lengths, "cosine", end_factor=hp.min_lr_ratio,
                                   warms_up=hp.warmup_ratio > 0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
