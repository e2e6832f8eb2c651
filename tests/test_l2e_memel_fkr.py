"""MEmeL's labelled FKR (Eq. 3-4): forward(z, mask, labels) -> the step's fkr from end_step()."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from memel_lightning.inhibition import MEmeL
from memel_lightning.inhibition.attach import attach
from memel_lightning.inhibition.feature_fkr import FeatureFKR, labels_to_rows

C, F, N = 4, 12, 96


def _stream(own_label: bool, g: torch.Generator):
    labels = torch.randint(0, C, (N,), generator=g)
    z = torch.rand(N, F, generator=g) * 2 - 1
    spike = torch.rand(N, F, generator=g) < 0.15
    if own_label:
        spike &= labels[:, None] == (torch.arange(F) % C)[None, :]
    return torch.where(spike, z + 12.0, z), labels


@pytest.mark.parametrize("own_label, expected", [(True, 0.0), (False, 1 - 1 / C)])
def test_step_fkr_follows_the_constructed_streams(own_label, expected):
    g = torch.Generator().manual_seed(0)
    memel = MEmeL(selector="threshold", tau=4.0, strategy="none", late_start=0)
    false = kills = 0.0
    for step in range(120):
        z, labels = _stream(own_label, g)
        memel.begin_step(record=True)
        memel(z, labels=labels)
        m = memel.end_step()
        if step >= 60:
            false += float(m["false_kills"])
            kills += float(m["labelled_kills"])
            assert float(m["fkr"]) == pytest.approx(float(m["false_kills"]) / max(float(m["labelled_kills"]), 1.0))
    assert kills > 500
    assert false / kills == pytest.approx(expected, abs=0.05)


def test_step_fkr_equals_a_feature_fkr_fed_the_same_phi():
    """The wiring: the tap's fkr is FeatureFKR's count on the tap's phi and selection, the
    state merged after the count, (B, L) labels laid out per token."""
    g = torch.Generator().manual_seed(1)
    memel = MEmeL(selector="topk", k=2, strategy="reverse", late_start=1, reduce_dims=(0,), forget_steps=3)
    shadow = FeatureFKR(forget_steps=3)
    for step in range(6):
        z = torch.randn(3, 5, 8, generator=g)
        labels = torch.randint(-1, 3, (3, 5), generator=g)
        memel.begin_step(record=True)
        memel(z, labels=labels)
        m = memel.end_step()
        x = z.reshape(15, 8)
        mu, var = memel.moments.mean, memel.moments.var
        phi = (x - mu) ** 2 / (var + memel.eps * var.mean())
        rows = labels.reshape(-1)
        if step >= 1:  # inhibiting: top-2 per token
            sel = torch.zeros_like(phi, dtype=torch.bool).scatter_(1, phi.topk(2, dim=1).indices, True)
            false, kills = shadow.count_kills(sel, rows)
            assert (float(m["false_kills"]), float(m["labelled_kills"])) == (float(false), float(kills))
            assert "fkr" in m
        else:
            assert "fkr" not in m  # before the late start nothing is killed: no FKR
        shadow.update(phi, rows)
        torch.testing.assert_close(memel.feature_fkr.mass, shadow.mass)


def test_no_labels_no_fkr_and_old_state_dicts_load():
    memel = MEmeL(late_start=0)
    memel.begin_step()
    memel(torch.randn(8, 4))
    metrics = memel.end_step()
    assert "fkr" not in metrics and "kill_concentration" in metrics
    state = {k: v for k, v in memel.state_dict().items() if not k.startswith("feature_fkr.")}
    fresh = MEmeL(late_start=0)
    fresh.load_state_dict(state)  # a checkpoint from before labelled FKR
    labelled = MEmeL(late_start=0)
    labelled(torch.randn(8, 4), labels=torch.randint(0, 3, (8,)))
    again = MEmeL(late_start=0)
    again.load_state_dict(labelled.state_dict())
    assert torch.equal(again.feature_fkr.mass, labelled.feature_fkr.mass)


def test_labels_to_rows_per_token_and_per_value():
    z = torch.zeros(2, 3, 4)
    lab = torch.tensor([[0, 1, 2], [3, 4, 5]])
    assert labels_to_rows(lab, z, (0,)).tolist() == [0, 1, 2, 3, 4, 5]
    per_value = labels_to_rows(lab, z, ())  # positions are neurons: a label per (item, neuron)
    assert per_value.shape == (2, 12) and per_value[1].tolist() == [3] * 4 + [4] * 4 + [5] * 4
    assert labels_to_rows(torch.tensor([7, 8]), z, (0,)).tolist() == [7, 7, 7, 8, 8, 8]
    with pytest.raises(ValueError, match="labels of shape"):
        labels_to_rows(torch.tensor([1, 2, 3]), z, (0,))


def test_tapset_aggregates_fkr_over_taps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    with attach(net, ["1", "3"], lambda name: MEmeL(name=name, late_start=0, strategy="none")) as taps:
        for _ in range(3):
            taps.set_inputs(labels=torch.randint(0, 3, (16,)))
            taps.begin_step(record=True)
            net(torch.randn(16, 6))
            out = taps.end_step()
    false = float(out["1/false_kills"]) + float(out["3/false_kills"])
    kills = float(out["1/labelled_kills"]) + float(out["3/labelled_kills"])
    assert float(out["fkr"]) == pytest.approx(false / max(kills, 1.0))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    memel = MEmeL(selector="threshold", tau=2.0, strategy="none", late_start=1, sync_dist=True)
    results = []
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        z, labels = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        half = slice(rank * 8, rank * 8 + 8)
        memel.begin_step(record=True)
        memel(z[half], labels=labels[half])
        m = memel.end_step()
        results.append([float(m[k]) for k in ("fkr", "false_kills", "labelled_kills")] if "fkr" in m else None)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ranks_report_the_fkr_of_the_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = MEmeL(selector="threshold", tau=2.0, strategy="none", late_start=1)
    g = torch.Generator().manual_seed(5)
    expected = []
    for _ in range(4):
        z, labels = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        single.begin_step(record=True)
        single(z, labels=labels)
        m = single.end_step()
        expected.append([float(m[k]) for k in ("fkr", "false_kills", "labelled_kills")] if "fkr" in m else None)
    assert expected[0] is None and all(e is not None for e in expected[1:])
    for r in ranks:
        for got, want in zip(r, expected):
            assert got == want if want is None else got == pytest.approx(want, rel=1e-6)


def test_toy_logs_labelled_fkr_at_the_steps_of_the_true_rate(tmp_path):
    """PolysemanticToy.memel_labels gives each sample's dominant feature; memel/fkr is logged
    at the callback's steps with kills, next to train_true_fkr."""
    import lightning.pytorch as pl

    from memel_lightning.analysis.fkr_tracking import read_scalars
    from memel_lightning.callback import MEmeLCallback
    from memel_lightning.data import PolysemanticDataModule
    from memel_lightning.models import PolysemanticToy

    pl.seed_everything(0)
    dm = PolysemanticDataModule(n_features=6, train_size=256, val_size=64, batch_size=32)
    model = PolysemanticToy(n_features=6, hidden=8)
    x, y = torch.rand(4, 6), torch.tensor([0, 5, 6, 2])
    assert torch.equal(model.memel_labels((x, y)), y)
    callback = MEmeLCallback(taps="default", memel={"k": 1, "late_start": 2}, log_every_n_steps=3)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=8, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         callbacks=[callback], logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb"))
    trainer.fit(model, dm)
    fkr = read_scalars(trainer.logger.log_dir, "memel/fkr")
    # the trainer's steps (s + 1) % 3 == 0 (2, 5) and the last batch (7), all after the late start
    assert sorted(fkr) == sorted(read_scalars(trainer.logger.log_dir, "train_true_fkr")) == [2, 5, 7]
    assert all(0.0 <= v <= 1.0 for v in fkr.values())
