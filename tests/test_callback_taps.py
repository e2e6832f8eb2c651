"""MEmeLCallback: tap resolution, tuple outputs, padding masks and teardown.

The statistics are checked against a direct float64 computation from the raw tap
outputs recorded by an independent forward hook (registered before the callback's,
so it sees the un-inhibited values).
"""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from memel_lightning.callback import MEmeLCallback
from memel_lightning.inhibition import TapNotFoundError, resolve_taps

B, L, H = 8, 6, 5  # batch, sequence length, hidden size


class TupleBlock(nn.Module):
    """Returns ``(tensor, extra)`` like a Hugging Face block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: Tensor):
        return torch.tanh(self.lin(x)), {"aux": x.sum()}


class DictBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: Tensor):
        return {"hidden": self.lin(x)}


class Padder(nn.Module):
    """Writes a huge value at padded positions: if padding reached the statistics or
    the selection, the mean would explode and top-1 would always pick padding."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return torch.where(mask.unsqueeze(-1), x, torch.full_like(x, 1e4))


class SeqModule(pl.LightningModule):
    """(B, L, H) sequences with a padding mask; ``net.0`` returns a tuple."""

    def __init__(self, with_taps: bool = True, with_mask: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(H, H)
        self.pad = Padder()
        self.net = nn.ModuleList([TupleBlock(H), nn.Sequential(nn.Linear(H, H), nn.GELU())])
        self.head = nn.Linear(H, 2)
        self.with_taps = with_taps
        self.with_mask = with_mask
        self.after_tap: list[Tensor] = []   # what the network receives after the tap
        self.extras: list[object] = []

    def memel_taps(self) -> list[str]:
        return ["pad", "net.0"]

    def memel_mask(self, batch) -> Tensor | None:
        return batch[1] if self.with_mask else None

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.pad(self.embed(x), mask)
        if self.training:
            self.after_tap.append(h.detach().clone())
        h, extra = self.net[0](h)
        self.extras.append(extra)
        h = self.net[1](h)
        pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)

    def training_step(self, batch, batch_idx):
        x, mask, y = batch
        return F.cross_entropy(self(x, mask), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def seq_data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, L, H, generator=g)
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    lengths[0] = L
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)
    mask[:, L - 1] = False  # the last position is padding in every sample
    y = torch.randint(0, 2, (n,), generator=g)
    return TensorDataset(x, mask, y)


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    kw = dict(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    kw.update(kwargs)
    return pl.Trainer(**kw)


def loader(ds: TensorDataset) -> DataLoader:
    return DataLoader(ds, batch_size=B, shuffle=False)


# ---------------------------------------------------------------------- tap resolution
def test_glob_patterns_in_model_order_without_duplicates():
    model = SeqModule()
    assert resolve_taps(model, ["net.?"]) == ["net.0", "net.1"]
    assert resolve_taps(model, ["net.[1]", "net.0", "net.*"])[:2] == ["net.0", "net.0.lin"]
    assert resolve_taps(model, ["net.1", "net.[01]"]) == ["net.0", "net.1"]
    # fnmatch's '*' crosses dots: net.* also matches the blocks' submodules
    assert set(resolve_taps(model, ["net.*"])) == {"net.0", "net.0.lin", "net.1", "net.1.0", "net.1.1"}


def test_default_taps_from_memel_taps(tmp_path):
    cb = MEmeLCallback(taps="default", memel={"late_start": 1})
    trainer(tmp_path, max_steps=2, callbacks=[cb]).fit(SeqModule(), loader(seq_data()))
    assert cb.tap_names == ["pad", "net.0"]
    assert cb.memel_for("pad").step == 2 and cb.memel_for("net.0").step == 2


def test_pattern_matching_nothing_lists_nearest_names(tmp_path):
    with pytest.raises(TapNotFoundError) as info:
        resolve_taps(SeqModule(), ["net.2"])
    msg = str(info.value)
    assert "'net.2'" in msg and "net.0" in msg and "net.1" in msg
    # through the trainer: the error comes out of fit unchanged, before any batch
    cb = MEmeLCallback(taps=["net.0", "nett.1"])
    with pytest.raises(TapNotFoundError, match=r"'nett\.1'.*net\.1"):
        trainer(tmp_path, max_steps=1, callbacks=[cb]).fit(SeqModule(), loader(seq_data()))


class NoTaps(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(H, 2)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.lin(batch[0].mean(1)), batch[2])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_default_without_memel_taps_is_a_clear_error(tmp_path):
    cb = MEmeLCallback(taps="default")
    with pytest.raises(ValueError, match=r"taps='default'.*NoTaps.*memel_taps"):
        trainer(tmp_path, max_steps=1, callbacks=[cb]).fit(NoTaps(), loader(seq_data()))


# ---------------------------------------------------------------------- output types
def test_tuple_output_first_element_inhibited_rest_untouched(tmp_path):
    model = SeqModule(with_mask=False)
    raw: list[Tensor] = []
    inhibited: list[Tensor] = []
    # registered before fit, so it runs before the callback's hook and sees raw values
    model.net[0].register_forward_hook(lambda m, a, out: raw.append(out[0].detach().clone()))
    model.net[1].register_forward_pre_hook(lambda m, a: inhibited.append(a[0].detach().clone()))
    cb = MEmeLCallback(taps=["net.0"], memel={"late_start": 2, "k": 1})
    trainer(tmp_path, max_steps=5, callbacks=[cb]).fit(model, loader(seq_data()))
    assert len(raw) == 5
    for step, (z, out) in enumerate(zip(raw, inhibited)):
        changed = (z != out).reshape(B, -1).sum(1)
        if step < 2:
            assert changed.sum() == 0
        else:  # top-1 per sample: exactly one value changed per sample (no ties in floats)
            assert changed.tolist() == [1] * B
    # the extra element passed through unchanged (a dict with the real sum)
    assert all(isinstance(e, dict) and "aux" in e for e in model.extras)


class DictModule(SeqModule):
    def __init__(self) -> None:
        super().__init__(with_mask=False)
        self.net[1] = DictBlock(H)

    def forward(self, x, mask):
        h, _ = self.net[0](self.embed(x))
        return self.head(self.net[1](h)["hidden"].mean(1))


def test_unsupported_output_type_names_the_tap(tmp_path):
    model = DictModule()
    cb = MEmeLCallback(taps=["net.1"])
    with pytest.raises(TypeError, match=r"tap 'net\.1'.*dict"):
        trainer(tmp_path, max_steps=1, callbacks=[cb]).fit(model, loader(seq_data()))
    # the hook was removed on the exception
    assert all(not m._forward_hooks for m in cb_model_modules(model))


def cb_model_modules(model: nn.Module):
    return [m for _, m in model.named_modules()]


# ---------------------------------------------------------------------- padding masks
def test_padding_never_selected_never_in_statistics(tmp_path):
    model = SeqModule(with_mask=True)
    ds = seq_data()
    raw: list[Tensor] = []
    model.pad.register_forward_hook(lambda m, a, out: raw.append(out.detach().clone()))
    steps = len(ds) // B
    cb = MEmeLCallback(taps=["pad"], memel={"late_start": 2, "k": 1, "forget_steps": 100})
    trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(model, loader(ds))
    assert len(raw) == steps

    masks = [ds.tensors[1][i * B:(i + 1) * B] for i in range(steps)]
    for step, (z, out, m) in enumerate(zip(raw, model.after_tap, masks)):
        pad = ~m
        assert (z[pad] == 1e4).all()
        # padded positions pass through untouched ...
        assert torch.equal(out[pad], z[pad])
        changed = (out != z)
        if step >= 2:  # ... and each sample had exactly one valid value inhibited
            assert changed.reshape(B, -1).sum(1).tolist() == [1] * B
            assert not changed[pad].any()

    # statistics: float64 mean / unbiased variance of the valid values only (no forgetting yet)
    z = torch.cat(raw).double().reshape(-1, L * H)
    valid = torch.cat(masks).unsqueeze(-1).expand(-1, L, H).reshape(-1, L * H)
    count = valid.sum(0)
    mean = (z * valid).sum(0) / count.clamp(min=1)
    var = ((z - mean).square() * valid).sum(0) / (count - 1).clamp(min=1)
    mom = cb.memel_for("pad").moments
    assert torch.equal(mom.count, count.long())
    seen = count > 1
    assert not seen.reshape(L, H)[L - 1].any()  # the always-padded position has no statistics
    assert (mom.mean.reshape(L, H)[L - 1] == 0).all() and (mom.steps.reshape(L, H)[L - 1] == 0).all()
    torch.testing.assert_close(mom.mean.double()[seen], mean[seen], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mom.var.double()[seen], var[seen], rtol=1e-4, atol=1e-5)
    assert mom.mean.abs().max() < 10  # 1e4 would show up here had padding leaked in


# ---------------------------------------------------------------------- teardown
@pytest.mark.parametrize("train_mode", [True, False])
def test_teardown_removes_every_hook(tmp_path, train_mode):
    model = SeqModule(with_mask=True)
    cb = MEmeLCallback(taps=["pad", "net.*"], memel={"late_start": 1, "k": 2, "active_in_eval": True})
    trainer(tmp_path, max_steps=4, callbacks=[cb]).fit(model, loader(seq_data()))
    assert all(not m._forward_hooks for m in cb_model_modules(model))

    twin = SeqModule(with_mask=True)
    twin.load_state_dict(model.state_dict())
    x, mask, _ = seq_data(8, seed=1).tensors
    model.train(train_mode)
    twin.train(train_mode)
    with torch.no_grad():
        assert torch.equal(model(x, mask), twin(x, mask))

    # the comparison is sensitive: with the hooks back in place the outputs differ
    cb.setup(None, model, "fit")
    with torch.no_grad():
        assert not torch.equal(model(x, mask), twin(x, mask))
    cb._remove_hooks()
