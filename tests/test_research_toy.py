"""Ground-truth toy: the true-monosemanticity measure on hand-made weights, phi selection
quality against direct computations, and a short fit that logs the ground-truth metrics."""
import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from memel_lightning import MEmeLCallback
from memel_lightning.analysis import toy_report
from memel_lightning.analysis.ground_truth import (
    feature_response,
    mass_share,
    neuron_truth,
    phi_selection_quality,
    set_max_phi,
    weight_share,
)
from memel_lightning.data import PolysemanticDataModule
from memel_lightning.data.toy_polysemantic import dominant_feature, sparse_features
from memel_lightning.models import PolysemanticToy
from tests.tb_utils import read_events


def test_weight_share_on_hand_made_weights():
    w = torch.tensor([
        [2.0, 0.0, 0.0],     # monosemantic
        [1.0, -1.0, 0.0],    # two features alike
        [0.0, 0.0, 0.0],     # dead
        [0.3, 0.3, -2.4],    # mostly feature 2
    ])
    share = weight_share(w)
    a = np.abs(w.numpy()).astype(np.float64)
    expected = np.where(a.sum(1) > 0, a.max(1) / np.where(a.sum(1) > 0, a.sum(1), 1), 0.0)
    np.testing.assert_allclose(share.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(share.numpy(), [1.0, 0.5, 0.0, 0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        mass_share(torch.tensor([[1.0, -1.0]]))


def test_activation_response_measure_on_hand_made_relu_layer():
    fc = nn.Linear(3, 4)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([
            [1.0, 0.2, 0.0],    # bias -0.3 cuts feature 1: responds to feature 0 only
            [0.5, 0.5, 0.5],    # all three alike
            [-1.0, -1.0, -1.0], # never fires: dead
            [1.0, 1.0, 0.0],    # two features
        ]))
        fc.bias.copy_(torch.tensor([-0.3, 0.0, 0.0, 0.0]))
    response = feature_response(lambda x: torch.relu(fc(x)), 3)
    expected = np.array([[0.7, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(response.numpy(), expected, atol=1e-7)
    truth = neuron_truth(response, threshold=0.9)
    np.testing.assert_allclose(truth.share.numpy(), [1.0, 1 / 3, 0.0, 0.5], rtol=1e-6)
    assert truth.mono.tolist() == [True, False, False, False]
    assert truth.alive.tolist() == [True, True, False, True]
    assert truth.counts() == {"mono_neurons": 1, "poly_neurons": 2, "dead_neurons": 1}
    assert truth.top_feature[0] == 0


def test_phi_selection_quality_against_direct_computation():
    gen = torch.Generator().manual_seed(1)
    h = torch.relu(torch.randn(500, 12, generator=gen)) * torch.rand(12, generator=gen)
    max_phi = set_max_phi(h, eps=0.01)
    x = h.double().numpy()
    mu, v = x.mean(0), x.var(0, ddof=1)
    direct = ((x - mu) ** 2 / (v + 0.01 * v.mean())).max(0)
    np.testing.assert_allclose(max_phi.numpy(), direct, rtol=1e-4)

    response = torch.rand(12, 5, generator=gen) ** 4
    response[3] = 0.0  # a dead neuron
    truth = neuron_truth(response, threshold=0.6)
    tau = float(np.median(direct))
    q = phi_selection_quality(max_phi, truth, tau=tau)
    alive = truth.alive.numpy()
    sel = (direct > tau) & alive
    mono = truth.mono.numpy()
    tp = int((sel & mono).sum())
    assert q.precision == pytest.approx(tp / sel.sum()) if sel.sum() else np.isnan(q.precision)
    assert q.recall == pytest.approx(tp / mono.sum()) if mono.sum() else np.isnan(q.recall)
    rho = stats.spearmanr(direct[alive], truth.share.numpy()[alive]).statistic
    assert q.spearman == pytest.approx(rho, rel=1e-6)
    assert q.phi_mono_ratio == pytest.approx(float((direct > tau).mean()))
    assert q.true_mono_ratio == pytest.approx(float(mono.mean()))


def test_data_is_sparse_and_labelled_by_dominant_feature():
    gen = torch.Generator().manual_seed(0)
    x = sparse_features(20000, 10, 0.1, gen)
    assert abs(float((x > 0).float().mean()) - 0.1) < 0.01
    y = dominant_feature(x)
    none = x.amax(1) == 0
    assert torch.all(y[none] == 10) and torch.all(y[~none] == x[~none].argmax(1))
    a = PolysemanticDataModule(n_features=5, train_size=50, val_size=20)
    b = PolysemanticDataModule(n_features=5, train_size=50, val_size=20)
    a.setup(); b.setup()
    torch.testing.assert_close(a.val_set.tensors[0], b.val_set.tensors[0])


def test_toy_fit_logs_ground_truth_metrics(tmp_path):
    pl.seed_everything(0)
    model = PolysemanticToy(n_features=6, hidden=10, l1=0.03, lr=1e-2)
    dm = PolysemanticDataModule(n_features=6, p_active=0.2, train_size=1024, val_size=512, batch_size=64)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, log_every_n_steps=4,
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=[MEmeLCallback(memel={"k": 1, "late_start": 4}, log_every_n_steps=4)],
    )
    trainer.fit(model, dm)
    acc = read_events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    for tag in ("val_loss", "val_poly_neurons", "val_mono_neurons", "val_dead_neurons", "val_phi_mono_ratio",
                "val_true_mono_ratio", "memel/mono_ratio"):
        assert tag in tags
    # the logged counts are those of the final weights, recomputed directly (numpy, float64)
    w = model.encoder.fc.weight.detach().double().numpy()
    b = model.encoder.fc.bias.detach().double().numpy()
    resp = np.abs(np.maximum(w + b[:, None], 0) - np.maximum(b, 0)[:, None])
    total = resp.sum(1)
    alive = total > 1e-6
    share = np.where(alive, resp.max(1) / np.where(alive, total, 1), 0)
    mono = alive & (share >= 0.9)
    assert acc.Scalars("val_mono_neurons")[-1].value == int(mono.sum())
    assert acc.Scalars("val_poly_neurons")[-1].value == int((alive & ~mono).sum())
    assert acc.Scalars("val_dead_neurons")[-1].value == int((~alive).sum())
    x = dm.val_set.tensors[0]
    with torch.no_grad():
        recon = float(((model(x) - x) ** 2).mean())
    assert acc.Scalars("val_loss")[-1].value == pytest.approx(recon, rel=1e-4)

    # the toy report reads the same numbers back (a one-run "sweep")
    run = tmp_path / "sweep" / "memel" / "seed_0"
    run.mkdir(parents=True)
    for f in tmp_path.glob("events.out.tfevents.*"):
        shutil.copy(f, run / f.name)
    (run / "done.json").write_text("{}")
    summary = toy_report.summarize(toy_report.collect(tmp_path / "sweep"))["memel"]
    tp, sel = acc.Scalars("val_phi_true_positives")[-1].value, acc.Scalars("val_phi_selected")[-1].value
    if sel:
        assert summary["pooled_precision"] == pytest.approx(tp / sel)
    else:
        assert np.isnan(summary["pooled_precision"])
    assert summary["val_poly_neurons"] == int((alive & ~mono).sum())
    paths = toy_report.write(toy_report.collect(tmp_path / "sweep"), {"memel": summary}, tmp_path / "rep")
    assert paths["png"].stat().st_size > 0 and "`memel`" in paths["md"].read_text()


def test_hidden_must_not_be_smaller_than_features():
    with pytest.raises(ValueError, match="m >= n"):
        PolysemanticToy(n_features=8, hidden=4)
