"""ImageClassifier: default taps (docs/method.md §6), checkpoint loading, schedule, optimiser."""
import math

import lightning.pytorch as pl
import pytest
import timm
import torch

from memel_lightning.callback import resolve_taps
from memel_lightning.models import ImageClassifier
from memel_lightning.models.image import load_pretrained_file
from memel_lightning.models.optim import warmup_decay
from memel_lightning.models.taps import middle_blocks, timm_default_taps

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(embed_dim=8, img_size=32, patch_size=2, window_size=4, in_chans=1)


def _build_on_meta(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize(
    "name, depths, expected",
    [
        ("swin_tiny_patch4_window7_224", (2, 2, 6, 2), [1, 2, 3, 4]),
        ("swin_small_patch4_window7_224", (2, 2, 18, 2), [7, 8, 9, 10]),
        ("swin_base_patch4_window7_224", (2, 2, 18, 2), [7, 8, 9, 10]),
    ],
)
def test_default_taps_of_real_swin_t_s_b(name, depths, expected):
    # the real architectures (pretrained=False), built on the meta device: no memory, no time
    net = _build_on_meta(name)
    assert tuple(len(stage.blocks) for stage in net.layers) == depths
    taps = timm_default_taps(net, prefix="model.")
    assert taps == [f"model.layers.2.blocks.{i}" for i in expected]
    d = depths[2]  # docs/method.md §6: blocks d/2-2 .. d/2+1 of stage 3
    assert expected == list(range(d // 2 - 2, d // 2 + 2))


def test_image_classifier_taps_resolve_and_run_on_swin_t_depths():
    # Swin-T depths with a small width: the callback resolves the taps on the LightningModule
    model = ImageClassifier(num_classes=10, model_kwargs=dict(TINY, num_heads=(1, 1, 1, 1)))
    taps = model.memel_taps()
    assert taps == [f"model.layers.2.blocks.{i}" for i in (1, 2, 3, 4)]
    assert resolve_taps(model, taps) == taps
    out = {}
    hooks = [dict(model.named_modules())[t].register_forward_hook(lambda m, a, o, t=t: out.__setitem__(t, o.shape)) for t in taps]
    model(torch.zeros(2, 1, 32, 32))
    for h in hooks:
        h.remove()
    # stage 3 of a 32x32 input with patch 2: 4x4 tokens of 4*embed_dim channels, (B, H, W, C)
    assert set(out.values()) == {torch.Size([2, 4, 4, 32])}


def test_swin_b_depths_with_small_width():
    model = ImageClassifier(num_classes=10, model_kwargs=dict(TINY, depths=(2, 2, 18, 2), num_heads=(1, 1, 1, 1)))
    assert model.memel_taps() == [f"model.layers.2.blocks.{i}" for i in (7, 8, 9, 10)]


def test_middle_blocks_rule_and_other_models():
    for d in range(1, 30):
        blocks = middle_blocks(d)
        want = [i for i in range(d // 2 - 2, d // 2 + 2) if 0 <= i < d]
        assert blocks == want
    vit = _build_on_meta("vit_base_patch16_224")  # flat 12 blocks: 4-7 like BERT-base
    assert timm_default_taps(vit) == [f"blocks.{i}" for i in (4, 5, 6, 7)]
    convnext = _build_on_meta("convnext_tiny")  # stages (3, 3, 9, 3): deepest is stage 2
    assert timm_default_taps(convnext) == [f"stages.2.blocks.{i}" for i in (2, 3, 4, 5)]
    resnet = _build_on_meta("resnet18")
    with pytest.raises(ValueError, match="explicit taps"):
        timm_default_taps(resnet)


def test_load_official_style_checkpoint_with_other_head(tmp_path):
    # an "official Swin" file: weights under 'model', the old downsample layout, a larger head
    src = timm.create_model("swin_tiny_patch4_window7_224", num_classes=21, depths=(2, 2, 2, 2), **dict(TINY, in_chans=3), num_heads=(1, 1, 1, 1))
    state = {}
    for k, v in src.state_dict().items():
        if "relative_position_index" in k:
            continue  # the official files keep it; timm rebuilds it either way
        if ".downsample." in k:  # timm puts downsample at the start of stage s, the original at the end of s-1
            stage = int(k.split(".")[1])
            k = k.replace(f"layers.{stage}.downsample", f"layers.{stage - 1}.downsample")
        state[k.replace("head.fc.", "head.")] = v.clone()
    path = tmp_path / "swin_22k_like.pth"
    torch.save({"model": state}, path)

    model = ImageClassifier(num_classes=7, pretrained=str(path), model_kwargs=dict(TINY, in_chans=3, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1)))
    dst = model.model.state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("head.fc."):
            assert torch.count_nonzero(dst[k]) == 0  # reset head, as the official fine-tuning code
        else:
            assert torch.equal(dst[k], v), k
    # with a class map the chosen rows of the big head are kept
    rows = [3, 0, 20, 5, 1, 2, 9]
    (tmp_path / "map.txt").write_text("\n".join(map(str, rows)))
    mapped = ImageClassifier(num_classes=7, pretrained=str(path), head_class_map=str(tmp_path / "map.txt"),
                             model_kwargs=dict(TINY, in_chans=3, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1)))
    assert torch.equal(mapped.model.head.fc.weight, src.head.fc.weight[rows])
    assert torch.equal(mapped.model.head.fc.bias, src.head.fc.bias[rows])


def test_load_safetensors_same_head_and_mismatch_errors(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("resnet10t", num_classes=4)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = ImageClassifier(model_name="resnet10t", num_classes=4, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(model.model.state_dict()[k], v), k
    with pytest.raises(RuntimeError, match="does not fit"):
        load_pretrained_file(timm.create_model("resnet14t", num_classes=4), path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ImageClassifier(model_name="resnet10t", num_classes=4, pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_true_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)
    monkeypatch.setattr("torch.hub.download_url_to_file", no_network)
    with pytest.raises(RuntimeError, match="pretrained: /path/to/weights.pth"):
        ImageClassifier(model_name="resnet10t", num_classes=4, pretrained=True)


def swin_lr(t, lr, warmup_lr, min_lr, warmup, total):
    """The Swin recipe's learning rate at step t, written from its formula."""
    if t < warmup:
        return warmup_lr + (lr - warmup_lr) * t / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def test_warmup_cosine_matches_formula():
    lr, warmup_lr, min_lr = 1e-3, 1e-6, 1e-5
    for t in range(0, 51):
        got = lr * warmup_decay(t, 7, 50, "cosine", start_factor=warmup_lr / lr, end_factor=min_lr / lr)
        assert got == pytest.approx(swin_lr(t, lr, warmup_lr, min_lr, 7, 50), rel=1e-12)


class _Data(pl.LightningDataModule):
    def __init__(self, n=24, batch_size=4):
        super().__init__()
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def train_dataloader(self):
        ds = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, drop_last=True)


def test_optimiser_groups_lr_scaling_and_schedule(tmp_path):
    model = ImageClassifier(
        num_classes=10, model_kwargs=dict(TINY, depths=(1, 1, 2, 1), num_heads=(1, 1, 1, 1)),
        lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, lr_base_batch_size=2, weight_decay=0.05,
        warmup_epochs=1, mixup_alpha=0.8, cutmix_alpha=1.0,
    )
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[Record()])
    trainer.fit(model, datamodule=_Data(n=24, batch_size=4))
    # global batch 4 * 1 device * 2 accumulation = 8 -> lr scaled by 8 / 2 = 4
    eff = model.effective_lr
    assert eff["lr"] == pytest.approx(4e-3) and eff["min_lr"] == pytest.approx(4e-5)
    # 6 batches per epoch / 2 accumulation = 3 optimiser steps per epoch, 6 in all, 3 warm-up
    assert (eff["warmup_steps"], eff["total_steps"]) == (3, 6)
    assert seen == pytest.approx([swin_lr(i // 2, 4e-3, 4e-6, 4e-5, 3, 6) for i in range(12)], rel=1e-9)
    # no weight decay on biases, norms and relative position tables
    opt = trainer.optimizers[0]
    names = {id(p): n for n, p in model.model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            no_decay = p.ndim <= 1 or "relative_position_bias_table" in names[id(p)]
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), names[id(p)]


def test_training_loss_matches_direct_computation():
    import numpy as np
    from timm.data import Mixup

    kwargs = dict(TINY, depths=(1, 1, 2, 1), num_heads=(1, 1, 1, 1), drop_path_rate=0.0)  # deterministic forward
    x = torch.rand(6, 1, 32, 32, dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    # label smoothing: (1 - eps) * CE + eps * mean_c(-log p_c), in float64
    model = ImageClassifier(num_classes=10, model_kwargs=kwargs, label_smoothing=0.1).train()
    loss = model.training_step((x, y), 0)
    logp = torch.log_softmax(model(x).double(), -1)
    want = (0.9 * -logp[torch.arange(6), y] + 0.1 * -logp.mean(-1)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # mixup / cutmix: soft-target CE against timm's mixed targets (same random draws)
    model = ImageClassifier(num_classes=10, model_kwargs=kwargs, label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0).train()
    np.random.seed(3)
    loss = model.training_step((x.clone(), y), 0)
    np.random.seed(3)
    xm, soft = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)(x.clone(), y)
    want = (-soft.double() * torch.log_softmax(model(xm).double(), -1)).sum(-1).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="even batch"):
        model.training_step((x[:5], y[:5]), 0)


def test_callback_refuses_timm_grad_checkpointing(tmp_path):
    import lightning.pytorch as pl

    from memel_lightning.callback import MEmeLCallback
    from memel_lightning.models.image import ImageClassifier

    model = ImageClassifier(
        model_name="swin_tiny_patch4_window7_224", num_classes=10,
        model_kwargs=dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), img_size=32, patch_size=2,
                          window_size=4, in_chans=1),
    )
    model.model.set_grad_checkpointing(True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        MEmeLCallback(taps="default").setup(trainer, model, "fit")
