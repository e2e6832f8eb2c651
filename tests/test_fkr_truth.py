"""kill_concentration (the unlabelled proxy once logged as memel/fkr) against the true rate
of killing neurons that are not truly monosemantic, on hand-made weights and selections, and
logged by the ground-truth toy."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from memel_lightning import MEmeLCallback
from memel_lightning.analysis.ground_truth import feature_response, neuron_truth, true_kill_rates
from memel_lightning.callback import log_step
from memel_lightning.data import PolysemanticDataModule
from memel_lightning.inhibition import MEmeL
from memel_lightning.models import PolysemanticToy
from tests.tb_utils import read_events


def _numpy_truth(weight: np.ndarray, bias: np.ndarray, threshold: float = 0.9):
    """Direct float64 truth of h = ReLU(W x + b): share of response mass on the top feature."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    a = np.abs(relu(weight.T + bias[None, :]) - relu(bias)[None, :]).T  # (m, n): A[j, i]
    total = a.sum(1)
    alive = total > 1e-6
    share = np.where(alive, a.max(1) / np.where(alive, total, 1.0), 0.0)
    return alive, alive & (share >= threshold)


def _numpy_rates(selected: np.ndarray, valid: np.ndarray, mono: np.ndarray, alive: np.ndarray, max_share: float):
    kills = (selected & valid).sum(0).astype(np.float64)
    broad = kills > max_share * valid.sum(0)
    fkr = (kills * broad).sum() / max(kills.sum(), 1.0)
    true_fkr = kills[~mono].sum() / kills.sum()
    dead = kills[~alive].sum() / kills.sum()
    return kills, fkr, true_fkr, dead


def _hand_made_layer() -> nn.Linear:
    fc = nn.Linear(3, 5)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([
            [2.0, 0.0, 0.0],    # 0: monosemantic (feature 0)
            [1.0, 1.0, 0.0],    # 1: polysemantic, share 0.5
            [1.0, 1.0, 1.0],    # 2: dead: the bias keeps it off for any single feature
            [0.0, 0.1, 3.0],    # 3: share 3 / 3.1 >= 0.9: monosemantic
            [0.5, 0.0, -1.0],   # 4: polysemantic (|h(e_2) - h(0)| = 0.5 -> share 0.5)
        ]))
        fc.bias.copy_(torch.tensor([0.0, 0.0, -2.0, 0.0, 0.5]))
    return fc


def test_kill_concentration_and_true_fkr_on_hand_made_layer_and_selection():
    fc = _hand_made_layer()
    truth = neuron_truth(feature_response(lambda x: torch.relu(fc(x)), 3), 0.9)
    alive, mono = _numpy_truth(fc.weight.detach().double().numpy(), fc.bias.detach().double().numpy())
    np.testing.assert_array_equal(truth.alive.numpy(), alive)
    np.testing.assert_array_equal(truth.mono.numpy(), mono)
    assert mono.tolist() == [True, False, False, True, False] and alive.tolist() == [True, True, False, True, True]

    # 10 samples, the last two masked out. Neuron 0 (truly mono) is killed broadly: FKR calls it
    # false; neuron 1 (poly) is killed once: FKR calls it true. The two rates must disagree.
    rng = np.random.default_rng(0)
    selected = np.zeros((10, 5), dtype=bool)
    selected[:6, 0] = True        # mono, 6 of 8 valid samples: broad -> "false" for FKR
    selected[0, 1] = True         # poly, 1 of 8: not broad -> "true" for FKR, false in truth
    selected[3, 2] = True         # dead: false in truth
    selected[5, 3] = True         # mono, 1 of 8
    selected[[1, 2, 4, 9], 4] = True  # poly, 3 valid (sample 9 is masked) -> broad
    valid = np.ones((10, 5), dtype=bool)
    valid[8:] = False
    max_share = 0.2

    memel = MEmeL(max_share=max_share, strategy="none", late_start=0,
                  selector_module=_Fixed(torch.from_numpy(selected)))
    memel.begin_step()
    memel(torch.from_numpy(rng.random((10, 5))).float(), torch.from_numpy(valid[:, 0]))
    metrics = memel.end_step()
    kills, fkr, true_fkr, dead = _numpy_rates(selected, valid, mono, alive, max_share)
    np.testing.assert_array_equal(metrics["kills_per_neuron"].numpy(), kills)
    assert metrics["kill_concentration"].item() == pytest.approx(fkr)
    assert metrics["kills"].item() == kills.sum()

    rates = true_kill_rates(metrics["kills_per_neuron"], truth)
    assert rates["true_fkr"] == pytest.approx(true_fkr)
    assert rates["dead_kill_frac"] == pytest.approx(dead)
    assert rates["poly_kill_frac"] == pytest.approx(true_fkr - dead)
    assert rates["kills"] == kills.sum()
    # the hand-made case: FKR = (6 + 3) / 12, truth = (1 + 1 + 3) / 12
    assert (fkr, true_fkr) == (pytest.approx(9 / 12), pytest.approx(5 / 12))

    assert np.isnan(true_kill_rates(torch.zeros(5), truth)["true_fkr"])
    with pytest.raises(ValueError, match="neurons"):
        true_kill_rates(torch.zeros(4), truth)


class _Fixed(nn.Module):
    """A selector returning a hand-made selection (masked values never selected)."""

    sync_dist = False

    def __init__(self, selection):
        super().__init__()
        self.selection = selection

    def forward(self, phi, mask=None, update=True):
        return self.selection if mask is None else self.selection & mask


def test_kills_per_neuron_follows_the_selection():
    torch.manual_seed(0)
    memel = MEmeL(k=1, late_start=1)
    memel.train()
    memel.begin_step()
    memel(torch.randn(8, 4))
    before = memel.end_step()["kills_per_neuron"]
    assert before.shape == (4,) and before.sum().item() == 0  # before the late start nothing is killed
    memel.begin_step()
    memel(torch.randn(8, 4))
    metrics = memel.end_step()
    kills = metrics["kills_per_neuron"]
    assert kills.shape == (4,) and kills.sum().item() == metrics["kills"].item() == 8.0


class _Capture(pl.Callback):
    """Before the optimizer step: the weights that produced the kills; after the batch: the
    kills the callback handed to the model (``memel_step_end``) and the rates it stored."""

    def __init__(self, model):
        self.seen, self.weights, self.kills = [], {}, {}
        original = model.memel_step_end

        def spy(metrics):
            self.kills[model.trainer.global_step] = metrics["encoder/kills_per_neuron"].clone()
            original(metrics)

        model.memel_step_end = spy

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        fc = pl_module.encoder.fc
        self.weights[trainer.global_step + 1] = (fc.weight.detach().clone(), fc.bias.detach().clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step in self.kills and self.kills[step].sum() > 0:
            # the step both the callback and the toy log this batch at
            self.seen.append((log_step(trainer), self.kills[step], *self.weights[step], dict(pl_module.last_kill_truth)))


def test_toy_logs_true_fkr_next_to_kill_concentration(tmp_path):
    pl.seed_everything(0)
    dm = PolysemanticDataModule(n_features=6, train_size=256, val_size=64, batch_size=32)
    model = PolysemanticToy(n_features=6, hidden=8)
    callback = MEmeLCallback(taps="default", memel={"k": 1, "late_start": 2, "max_share": 0.2},
                             log_every_n_steps=3, hist_every_n_steps=1000)
    capture = _Capture(model)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=8, default_root_dir=tmp_path, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[callback, capture],
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb"),
    )
    trainer.fit(model, dm)
    events = read_events(trainer.logger.log_dir)
    scalars = lambda tag: {e.step: e.value for e in events.Scalars(tag)}  # noqa: E731
    true_fkr, fkr = scalars("train_true_fkr"), scalars("memel/kill_concentration")
    # recorded on the trainer's steps (s + 1) % 3 == 0 (2, 5) and at the last batch (7);
    # kills from the late start (batch 2) on
    assert sorted(fkr) == [2, 5, 7] and sorted(true_fkr) == [2, 5, 7] and sorted(scalars("train_dead_kill_frac")) == [2, 5, 7]
    assert [s for s, *_ in capture.seen] == [2, 5, 7]
    for step, kills, weight, bias, stored in capture.seen:
        alive, mono = _numpy_truth(weight.double().numpy(), bias.double().numpy())
        k = kills.double().numpy()
        expected = k[~mono].sum() / k.sum()
        assert stored["true_fkr"] == pytest.approx(expected)
        assert true_fkr[step] == pytest.approx(expected, abs=1e-6)
        assert stored["dead_kill_frac"] == pytest.approx(k[~alive].sum() / k.sum())


def test_fkr_truth_summary_against_numpy(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from memel_lightning.analysis import fkr_truth

    rng = np.random.default_rng(1)
    runs = []
    for seed in range(2):
        steps = [1, 11, 21, 31]
        fkr, true, dead = rng.random(4), rng.random(4), rng.random(4) * 0.1
        writer = SummaryWriter(str(tmp_path / "v" / f"seed_{seed}"))
        for i, s in enumerate(steps):
            writer.add_scalar("memel/kill_concentration", fkr[i], s)
            if i > 0:  # no kills at the first logged step: no true rate there
                writer.add_scalar("train_true_fkr", true[i], s)
                writer.add_scalar("train_dead_kill_frac", dead[i], s)
        writer.close()
        runs.append(np.stack([fkr[1:], true[1:], dead[1:]], axis=1))
    got = fkr_truth.summarize(tmp_path / "v")
    means = np.array([r.mean(0) for r in runs])
    pooled = np.concatenate(runs)
    assert got["runs"] == 2 and got["steps"] == 3
    assert got["kc_mean"] == pytest.approx(means[:, 0].mean(), rel=1e-6)
    assert got["true_mean"] == pytest.approx(means[:, 1].mean(), rel=1e-6)
    assert got["true_mean_std"] == pytest.approx(means[:, 1].std(ddof=1), rel=1e-5)
    assert got["gap_mean"] == pytest.approx((means[:, 1] - means[:, 0]).mean(), rel=1e-5)
    assert got["kc_final"] == pytest.approx(np.mean([r[-1, 0] for r in runs]), rel=1e-6)
    assert got["true_final"] == pytest.approx(np.mean([r[-1, 1] for r in runs]), rel=1e-6)
    assert got["dead_mean"] == pytest.approx(means[:, 2].mean(), rel=1e-5)
    assert got["corr"] == pytest.approx(np.corrcoef(pooled[:, 0], pooled[:, 1])[0, 1], rel=1e-5)
    assert "| `v` | 2 | 3 |" in fkr_truth.table([tmp_path / "v"])
