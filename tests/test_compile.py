"""torch.compile on a tapped model: trains to the eager numbers, compiles only while warming
up (no recompilation per step), and every graph break is a tap (memel_lightning/compile.py)."""
import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memel_lightning import MEmeLCallback
from memel_lightning.compile import CompileModel, compile_modules
from memel_lightning.inhibition import MEmeL, MEmeLConfig, attach

STEPS = 20
TAPS = ["act1", "act2"]


class TinyNet(nn.Module):
    """Two tapped activations in a forward written in user code (as a real model's is)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(8, 32), nn.GELU()
        self.fc2, self.act2 = nn.Linear(32, 32), nn.GELU()
        self.fc3 = nn.Linear(32, 4)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        h = self.act2(self.fc2(h))
        return self.fc3(h)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def batches(n: int = STEPS):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)) for _ in range(n)]


def train_plain(compiled: bool, selector: str):
    torch._dynamo.reset()
    net = tiny_net()
    options = dict(k=1, late_start=3, selector=selector, target_ratio=0.1)
    taps = attach(net, TAPS, lambda name: MEmeL(name=name, **options))
    stats = compile_modules(net, [""]) if compiled else None
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses, compilations, kills = [], [], []
    for step, (x, y) in enumerate(batches()):
        taps.begin_step(record=step % 5 == 0)
        loss = (net(x) - y).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        metrics = taps.end_step()
        losses.append(loss.item())
        if metrics:
            kills.append(float(metrics["act1/kills"]))
        compilations.append(stats.compilations if stats else 0)
    taps.remove()
    return losses, net, compilations, stats, kills


@pytest.mark.parametrize("selector", ["topk", "moving_threshold"])
def test_compiled_tapped_model_trains_like_eager_without_recompiling(selector):
    eager_losses, eager_net, _, _, eager_kills = train_plain(False, selector)
    losses, net, compilations, stats, kills = train_plain(True, selector)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=1e-5, atol=1e-6)
    for p, q in zip(net.parameters(), eager_net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert kills == eager_kills and kills[-1] > 0  # the taps inhibited, in both runs alike
    # Warm-up: the network is cut at the taps into pieces (plus the hook's own frame per
    # tap), all compiled at the first step; nothing afterwards (late start, recording
    # steps, the moving threshold's start): no recompilation.
    assert len(TAPS) + 1 <= compilations[0] <= 2 * (len(TAPS) + 1), compilations
    assert compilations[-1] == compilations[0], compilations
    breaks = stats.graph_breaks
    assert breaks and all("disable" in reason for reason in breaks), breaks


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = (self.net(x) - y).square().mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CountCompilations(pl.Callback):
    def __init__(self, compile_cb) -> None:
        self.compile_cb, self.per_step = compile_cb, []

    def on_train_batch_end(self, *args) -> None:
        self.per_step.append(self.compile_cb.stats.compilations if self.compile_cb else 0)


def fit(compiled: bool):
    torch._dynamo.reset()
    pl.seed_everything(0)
    module = TinyModule()
    x = torch.cat([b[0] for b in batches()])
    y = torch.cat([b[1] for b in batches()])
    compile_cb = CompileModel() if compiled else None
    counter = CountCompilations(compile_cb)
    memel_cb = MEmeLCallback(taps=[f"net.{t}" for t in TAPS], memel=MEmeLConfig(k=1, late_start=3), log_every_n_steps=5)
    trainer = pl.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[memel_cb, counter] + ([compile_cb] if compiled else []),
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    return module, counter.per_step, compile_cb, trainer


def test_compile_callback_trains_a_lightning_module_like_eager():
    eager, _, _, eager_trainer = fit(False)
    module, per_step, compile_cb, trainer = fit(True)
    assert len(module.losses) == STEPS
    torch.testing.assert_close(torch.tensor(module.losses), torch.tensor(eager.losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trainer.callback_metrics["memel/mono_ratio"],
                               eager_trainer.callback_metrics["memel/mono_ratio"])
    assert len(TAPS) + 1 <= per_step[0] <= 2 * (len(TAPS) + 1) and per_step[-1] == per_step[0], per_step
    assert all("disable" in reason for reason in compile_cb.stats.graph_breaks)


def test_compile_callback_switch_and_errors():
    module = TinyModule()
    CompileModel(enabled=False).setup(None, module, "fit")
    assert module.net._compiled_call_impl is None
    with pytest.raises(ValueError, match="no submodule 'encoder'"):
        compile_modules(module, ["encoder"])
