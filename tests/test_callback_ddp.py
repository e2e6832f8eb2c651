"""Data parallelism: with ``sync_dist`` / the callback's ``sync_stats`` the batch moments
are all-reduced before the merge, so every rank holds the statistics of the global batch
(docs/method.md §2.3), and end_step's metrics, merged with one collective, are those of the
global batch. Two CPU processes over gloo, spawned directly with
torch.multiprocessing, against one process fed the concatenated global batch."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp
from callback_ddp_worker import SPLITS, STEPS, WORLD, _worker, case_options, run_steps, run_tapset, stream

from memel_lightning.callback import MEmeLCallback
from memel_lightning.data.digits import DigitsDataModule
from memel_lightning.inhibition import MEmeL
from memel_lightning.models.digits import DigitsClassifier



@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    """One spawn of two gloo ranks serves both cases (starting processes is the slow part)."""
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("masked", [False, True])
def test_two_gloo_ranks_equal_one_process_on_the_global_batch(gloo_results, masked):
    ranks = [result[masked] for result in gloo_results]

    single = MEmeL(sync_dist=False, name="tap", **case_options(masked))
    outputs, grads, _ = run_steps(single, masked, rank=None)
    ref = single.state_dict()

    for key in ("moments.mean", "moments.var", "moments.count", "moments.steps", "moments.skipped"):
        # identical on both ranks (same all-reduced values, same merge) ...
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        # ... and equal to the statistics of the global batch
        torch.testing.assert_close(ranks[0]["state"][key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    assert ranks[0]["step"] == ranks[1]["step"] == single.step == STEPS
    if masked:  # the mask really removed values: some positions have fewer samples
        assert ref["moments.count"].min() < ref["moments.count"].max()
    else:
        assert (ref["moments.count"] == 8 * STEPS).all()

    # top-k is per sample: with the same statistics every rank inhibits its rows exactly
    # as the single process inhibits the same rows of the global batch
    for step in range(STEPS):
        sizes = SPLITS[step % len(SPLITS)]
        for rank in range(WORLD):
            torch.testing.assert_close(ranks[rank]["outputs"][step], outputs[step].split(sizes)[rank])
            torch.testing.assert_close(ranks[rank]["grads"][step], grads[step].split(sizes)[rank])
    # and the late start held: identity for 3 steps, then values were inhibited
    for step, (z, _) in enumerate(stream(masked)):
        assert torch.equal(outputs[step], z) == (step < 3), step


def test_two_gloo_ranks_with_dynamic_padding_equal_one_process(gloo_results):
    """Each rank pads to its own longest sequence (variable_shape): the ranks' neuron counts
    differ in a step, yet both hold the global batch's statistics."""
    ranks = [result["ragged"] for result in gloo_results]
    single = MEmeL(sync_dist=False, name="tap", **case_options("ragged"))
    outputs, _, _ = run_steps(single, True, rank=None, ragged=True)
    ref = single.state_dict()
    for key in ("moments.mean", "moments.var", "moments.count", "moments.steps"):
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        torch.testing.assert_close(ranks[0]["state"][key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    for step in range(STEPS):
        sizes = SPLITS[step % len(SPLITS)]
        for rank in range(WORLD):
            mine = ranks[rank]["outputs"][step]
            torch.testing.assert_close(mine, outputs[step].split(sizes)[rank][:, : mine.shape[1]])


@pytest.mark.parametrize("case", [False, True, "ragged", "regularize"])
def test_two_gloo_ranks_report_the_metrics_of_one_process_on_the_global_batch(gloo_results, case):
    """Every metric end_step returns (each is logged as memel/tap/<name>) and the counts
    behind them: equal on both ranks, and equal to one process fed the global batch."""
    ranks = [result[case]["metrics"] for result in gloo_results]
    single = MEmeL(sync_dist=False, name="tap", **case_options(case))
    _, _, expected = run_steps(single, masked=case is not False, rank=None, ragged=case == "ragged")
    checked = set()
    for step in range(STEPS):
        ref = expected[step]
        assert set(ranks[0][step]) == set(ranks[1][step]) == set(ref), step
        for key, value in ref.items():
            assert torch.equal(ranks[0][step][key], ranks[1][step][key]), (step, key)
            torch.testing.assert_close(ranks[0][step][key].double(), value.double(), rtol=1e-4, atol=1e-6,
                                       msg=lambda m, step=step, key=key: f"step {step} {key}: {m}")
            if value.dim() == 0 and float(value) not in (0.0, 1.0):
                checked.add(key)
    # the comparison covered non-trivial values of every logged metric of the case
    wanted = {"selected_frac", "mono_ratio", "phi_mean", "phi_max", "kill_concentration"}
    if case == "regularize":
        wanted.add("reg_loss")
    assert wanted <= checked, wanted - checked


def test_two_gloo_ranks_tapset_metrics_and_aggregates_equal_one_process(gloo_results):
    """Two taps merged in ONE collective per step: every per-tap metric and the aggregates
    (memel/mono_ratio, memel/kill_concentration) equal those of one process on the global batch."""
    ranks = [result["tapset"] for result in gloo_results]
    expected = run_tapset(None, sync=False)
    nontrivial = set()
    for step in range(STEPS):
        assert {"0/mono_ratio", "2/mono_ratio", "mono_ratio", "kill_concentration"} <= set(expected[step])
        for key, value in expected[step].items():
            assert torch.equal(ranks[0][step][key], ranks[1][step][key]), (step, key)
            torch.testing.assert_close(ranks[0][step][key].double(), value.double(), rtol=1e-4, atol=1e-6)
            if value.dim() == 0 and float(value) not in (0.0, 1.0):
                nontrivial.add(key)
    assert {"mono_ratio", "kill_concentration", "0/phi_mean", "2/selected_frac"} <= nontrivial, nontrivial


# ---------------------------------------------------------------------- Lightning DDP
class DumpStats(pl.Callback):
    """Each rank writes its statistics at the end of training."""

    def __init__(self, memel_cb: MEmeLCallback, out_dir: str) -> None:
        self.memel_cb, self.out_dir = memel_cb, out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        stats = {tap: self.memel_cb.memel_for(tap).state_dict() for tap in self.memel_cb.tap_names}
        torch.save(
            {"stats": stats, "weights": pl_module.state_dict(), "world": trainer.world_size},
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow  # ~30 s here: Lightning's spawn imports Lightning in both ranks
def test_lightning_ddp_spawn_ranks_hold_identical_statistics(tmp_path):
    pl.seed_everything(0)
    model = DigitsClassifier(hidden_sizes=(16, 8))
    cb = MEmeLCallback(taps="default", memel={"late_start": 2, "k": 1}, log_every_n_steps=2)
    trainer = pl.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp_spawn", max_steps=6, limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[cb, DumpStats(cb, str(tmp_path))],
    )
    trainer.fit(model, DigitsDataModule(batch_size=16))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert ranks[0]["world"] == WORLD
    for tap in ("hidden.0", "hidden.1"):
        a, b = ranks[0]["stats"][tap], ranks[1]["stats"][tap]
        for key in ("moments.mean", "moments.var", "moments.count", "moments.steps"):
            assert torch.equal(a[key], b[key]), (tap, key)
        # the count is that of the global batch: 6 steps x 16 samples x 2 ranks
        assert (a["moments.count"] == 6 * 16 * WORLD).all()
        assert a["moments.var"].abs().sum() > 0
    for key in ranks[0]["weights"]:
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key


@pytest.mark.parametrize("sync", [True, False])
def test_callback_sync_stats_reaches_every_tap(sync):
    cb = MEmeLCallback(taps="default", sync_stats=sync)
    cb.setup(None, DigitsClassifier(hidden_sizes=(4, 4)), "fit")
    try:
        for tap in ("hidden.0", "hidden.1"):
            memel = cb.memel_for(tap)
            assert memel.moments.sync_dist is sync and memel.selector.sync_dist is sync
    finally:
        cb._remove_hooks()
