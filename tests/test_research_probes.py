"""Neuron probes and the ablation probe against direct float64 computations."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memel_lightning.analysis.ablation import ablate_neuron, ablation_probe
from memel_lightning.analysis.cli import build_from_config
from memel_lightning.analysis.probes import load_tap_statistics, probe_neurons
from memel_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TAU = 9.0
EPS = 0.01


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run through ``cli.py fit``: its config.yaml and checkpoint."""
    tmp = tmp_path_factory.mktemp("probe")
    main([
        "fit", "--config", str(REPO / "configs" / "toy_memel.yaml"),
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=12", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=cpu",
        f"--trainer.logger.init_args.save_dir={tmp}", "--model.init_args.hidden_sizes=[24, 16]",
        "--trainer.callbacks.init_args.memel.late_start=3",
    ])
    (config,) = tmp.rglob("config.yaml")
    (ckpt,) = tmp.rglob("*.ckpt")
    model, data, _ = build_from_config(config, cli_main=main)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    data.setup("validate")
    return config, ckpt, model, data


def activations(model, data):
    xs, ys, h0s, h1s = [], [], [], []
    with torch.no_grad():
        for x, y in data.val_dataloader():
            h0 = model.hidden[0](x.flatten(1))
            h1 = model.hidden[1](h0)
            xs.append(x); ys.append(y); h0s.append(h0); h1s.append(h1)
    return torch.cat(xs), torch.cat(ys), {"hidden.0": torch.cat(h0s).double(), "hidden.1": torch.cat(h1s).double()}


def test_statistics_come_from_the_checkpoint(trained):
    _, ckpt, _, _ = trained
    stats = load_tap_statistics(ckpt)
    assert sorted(stats) == ["hidden.0", "hidden.1"]
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    (state,) = [v for k, v in raw["callbacks"].items() if k.startswith("MEmeLCallback")]
    torch.testing.assert_close(stats["hidden.0"].moments.var, state["taps"]["hidden.0"]["moments.var"])
    assert stats["hidden.1"].moments.num_neurons == 16 and stats["hidden.1"].neuron_shape == (16,)
    with pytest.raises(KeyError, match="no MEmeLCallback state"):
        load_tap_statistics({"callbacks": {"ModelCheckpoint{}": {}}})


def test_probe_mono_ratio_histogram_and_top_neurons(trained):
    _, ckpt, model, data = trained
    stats = load_tap_statistics(ckpt)
    model.train()
    res = probe_neurons(model, data.val_dataloader(), stats, eps=EPS, tau_report=TAU, top=3)
    assert model.training  # the probe ran in eval mode and gave the mode back
    _, y, acts = activations(model, data)
    for tap, h in acts.items():
        mu = stats[tap].moments.mean.double()
        v = stats[tap].moments.var.double()
        phi = (h - mu) ** 2 / (v + EPS * v.mean())
        max_phi = phi.max(0).values.numpy()
        np.testing.assert_allclose(res[tap].max_phi, max_phi, rtol=1e-4)
        assert res[tap].mono_ratio == pytest.approx(float((max_phi > TAU).mean()))
        assert res[tap].hist_counts.sum() == pytest.approx(phi.numel())
        top = res[tap].top[0]
        assert top.index == int(np.argmax(max_phi))
        fired = phi[:, top.index] > TAU
        labels, counts = np.unique(y[fired].numpy(), return_counts=True)
        assert top.label_counts == {str(l): int(c) for l, c in zip(labels, counts)}
        assert top.fire_rate == pytest.approx(float(fired.double().mean()))
        assert top.top_samples[0] == int(phi[:, top.index].argmax())
    assert not any(m._forward_hooks for m in model.modules())


def test_ablation_probe_matches_direct_computation_and_restores_model(trained):
    _, ckpt, model, data = trained
    model.train()
    stats = load_tap_statistics(ckpt)
    x, y, _ = activations(model, data)
    with torch.no_grad():
        before = model(x).clone()
    neuron = 5
    value = float(stats["hidden.0"].moments.mean[neuron])
    rows = ablation_probe(model, data.val_dataloader(), "hidden.0", neuron, value)
    # direct: the same network with neuron 5 of the first hidden layer forced to its mean
    model.eval()
    with torch.no_grad():
        h0 = model.hidden[0](x.flatten(1)).double()
        h0_abl = h0.clone()
        h0_abl[:, neuron] = value
        def head(h):
            return model.head(model.hidden[1](h.float())).double()
        base = F.cross_entropy(head(h0), y, reduction="none")
        abl = F.cross_entropy(head(h0_abl), y, reduction="none")
    for r in rows:
        sel = y == r.label
        assert r.samples == int(sel.sum())
        assert r.loss == pytest.approx(float(base[sel].mean()), rel=1e-5)
        assert r.increase == pytest.approx(float(abl[sel].mean() - base[sel].mean()), abs=1e-5)
    assert {r.label for r in rows} == set(y.tolist())
    # restored: no hooks left, same outputs, train mode back
    model.train()
    ablation_probe(model, data.val_dataloader(), "hidden.0", neuron, value, max_batches=1)
    assert model.training is True
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_ablation_hook_removed_on_error():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = torch.randn(5, 3)
    ref = net(x)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_neuron(net, "1", neuron=1, value=0.25):
            assert torch.all(net(x)[:, 1] == 0.25)
            raise RuntimeError("boom")
    assert not net[1]._forward_hooks
    torch.testing.assert_close(net(x), ref)
    with pytest.raises(IndexError, match="out of range"):
        with ablate_neuron(net, "1", neuron=9, value=0.0):
            net(x)


def test_ablate_with_reduce_dims_sets_every_position():
    class Tok(nn.Module):
        def forward(self, z):
            return z

    net = nn.Sequential(Tok())
    z = torch.randn(2, 3, 4)  # (B, L, H); reduce_dims=(0,): a neuron is a hidden unit
    with ablate_neuron(net, "0", neuron=2, value=7.0, reduce_dims=(0,)):
        out = net(z)
    assert torch.all(out[:, :, 2] == 7.0)
    keep = [0, 1, 3]
    torch.testing.assert_close(out[:, :, keep], z[:, :, keep])


def test_probe_command_writes_report(trained, tmp_path):
    config, ckpt, _, _ = trained
    out = tmp_path / "probe"
    result = main(["probe", "--config", str(config), "--ckpt_path", str(ckpt), "--out", str(out), "--top", "3",
                   "--ablate", "hidden.1:2", "--ablate_top", "1"])
    for name in ("probe.md", "probe.json", "phi_hist.png", "ablation.md", "ablation.json"):
        assert (out / name).stat().st_size > 0
    assert len(result["ablations"]) == 3
    md = (out / "probe.md").read_text()
    assert f"{result['results']['hidden.0'].mono_ratio:.4f}" in md
