"""GlueClassifier: taps, padding, metrics against sklearn/scipy, a real RTE fit, submissions, CLI."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from memel_lightning import MEmeLCallback
from memel_lightning.data import GlueDataModule, GlueSubmissionWriter
from memel_lightning.data.glue import GLUE_TASKS, glue_task, read_glue_tsv
from memel_lightning.inhibition import MEmeL
from memel_lightning.models import GlueClassifier
from memel_lightning.models.glue import glue_metrics
from memel_lightning.models.taps import encoder_blocks, middle_blocks
from tests.glue_fixtures import TINY_BERT, make_tokenizer
from tests.test_configs import memel_settings_of
from tests.tb_utils import read_events
from tests.test_l2e_causal_lm import CONCENTRATION

REPO = Path(__file__).resolve().parents[1]
MEMEL = {"k": 1, "late_start": 2, "forget_steps": 10, "variable_shape": True}


@pytest.fixture(scope="module")
def rte_tokenizer(tmp_path_factory) -> str:
    rte = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "RTE" / "train.tsv"
    texts = []
    if rte.is_file():
        split = read_glue_tsv(rte, "rte")
        texts = split.texts[0] + split.texts[1]
    return make_tokenizer(tmp_path_factory.mktemp("rte_tok"), texts)


def tiny(task: str | None = "rte", layers: int = 6, **kw) -> GlueClassifier:
    cfg = dict(TINY_BERT, num_hidden_layers=layers, vocab_size=kw.pop("vocab_size", 3000))
    return GlueClassifier(task=task, config=cfg, lr=kw.pop("lr", 1e-3), **kw)


def trainer(tmp_path: Path, callbacks: list, **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, default_root_dir=tmp_path, enable_progress_bar=False,
                enable_model_summary=False, logger=False, enable_checkpointing=False)
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


# ---------------------------------------------------------------------- taps
def test_middle_four_blocks_rule() -> None:
    assert middle_blocks(12) == [4, 5, 6, 7]  # docs/method.md §6, BERT-base
    assert middle_blocks(6) == [1, 2, 3, 4]   # MiniLM-L6
    assert middle_blocks(24) == [10, 11, 12, 13]
    assert middle_blocks(8) == [2, 3, 4, 5]
    assert middle_blocks(4) == [0, 1, 2, 3] and middle_blocks(2) == [0, 1]
    for depth in range(4, 40):
        blocks = middle_blocks(depth)
        assert blocks == list(range(depth // 2 - 2, depth // 2 + 2))


def test_taps_name_the_encoder_blocks() -> None:
    model = tiny(layers=12)
    assert model.memel_taps() == [f"model.bert.encoder.layer.{i}" for i in (4, 5, 6, 7)]
    modules = dict(model.named_modules())
    assert all(type(modules[t]).__name__ == "BertLayer" for t in model.memel_taps())
    distil = GlueClassifier(task="sst2", config={"model_type": "distilbert", "dim": 16, "n_layers": 6, "n_heads": 2,
                                                 "hidden_dim": 32, "vocab_size": 50})
    name, blocks = encoder_blocks(distil.model)
    assert name == "distilbert.transformer.layer" and len(blocks) == 6
    assert distil.memel_taps() == [f"model.distilbert.transformer.layer.{i}" for i in (1, 2, 3, 4)]


def test_block_output_is_a_tensor_or_tuple_and_taps_keep_the_shape() -> None:
    """transformers 5 blocks return a tensor (4.x: a tuple); the callback handles both. Before
    the late start a (B, L, H) tap must come back as (B, L, H) (regression: it came back flat)."""
    model = tiny(layers=6)
    seen = {}
    layer = model.model.bert.encoder.layer[1]
    layer.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    model(torch.ones(2, 5, dtype=torch.long))
    out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
    assert out.shape == (2, 5, 32)
    memel = MEmeL(late_start=5, variable_shape=True)
    memel.train()
    z = torch.randn(3, 7, 4)
    assert memel(z).shape == z.shape


def test_padding_never_selected_nor_counted() -> None:
    """Outliers in padded positions would win every top-k: with the mask they are untouched."""
    torch.manual_seed(0)
    memel = MEmeL(k=2, late_start=0, variable_shape=True)
    memel.train()
    total = torch.zeros(9)
    for lengths in ([5, 3, 9, 2], [4, 4, 6, 1], [7, 2, 3, 3]):
        L = max(lengths)
        mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
        z = torch.randn(4, L, 3)
        z[~mask] = 1e4  # would have the largest phi of all if it were counted or scored
        out = memel(z, mask)
        assert torch.equal(out[~mask], z[~mask])
        changed = (out != z).any(-1)
        assert bool(changed[mask].any()) and not bool(changed[~mask].any())
        total[:L] += mask.sum(0)
    count = memel.moments.count.reshape(-1, 3)
    assert torch.equal(count[:, 0].float(), total[: count.shape[0]])
    assert torch.isfinite(memel.moments.mean).all() and float(memel.moments.mean.abs().max()) < 10


def test_callback_masks_padding_in_a_real_batch_stream(shared_data: Path, rte_tokenizer: str, tmp_path: Path) -> None:
    """Through the callback on real RTE batches: the tap's count buffer equals the sums of the
    attention masks, and padded positions leave the tap unchanged while valid ones are inhibited."""
    dm = GlueDataModule("rte", data_dir=str(shared_data / "glue" / "RTE"), tokenizer=rte_tokenizer,
                        batch_size=4, max_length=128, seed=3)
    model = tiny(task="rte")
    tap_index = 2
    layers = model.model.bert.encoder.layer
    before, after, masks = [], [], []
    # Registered before fit, so it runs before the callback's hook: it sees the raw output.
    layers[tap_index].register_forward_hook(lambda m, a, out: before.append(out.detach().clone()) if m.training else None)
    layers[tap_index + 1].register_forward_pre_hook(lambda m, a: after.append(a[0].detach().clone()) if m.training else None)

    class Masks(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            masks.append(batch["attention_mask"].clone())

    callback = MEmeLCallback(memel=MEMEL, log_every_n_steps=1)
    trainer(tmp_path, [callback, Masks()], max_steps=6, limit_val_batches=0).fit(model, dm)
    tap = f"model.bert.encoder.layer.{tap_index}"
    assert tap in callback.tap_names and len(masks) == len(before) == len(after) == 6
    count = callback.memel_for(tap).moments.count.reshape(-1, 32)
    expected = torch.zeros(count.shape[0], dtype=torch.long)
    for mask in masks:
        expected[: mask.shape[1]] += mask.sum(0)
    assert torch.equal(count[:, 0], expected)
    assert torch.equal(count, count[:, :1].expand_as(count))  # every hidden unit of a position alike
    assert len({m.shape[1] for m in masks}) > 1               # the sequence axis did vary
    inhibited = 0
    for z, out, mask in zip(before, after, masks):
        changed = (out != z).any(-1)
        assert not bool(changed[mask == 0].any())
        inhibited += int(changed[mask == 1].sum())
    assert inhibited >= 4 * (6 - MEMEL["late_start"])  # k=1 per sample after the late start


def test_inhibited_positions_are_within_the_mask(shared_data: Path, rte_tokenizer: str, tmp_path: Path) -> None:
    dm = GlueDataModule("rte", data_dir=str(shared_data / "glue" / "RTE"), tokenizer=rte_tokenizer,
                        batch_size=8, max_length=48)
    dm.setup("fit")
    batches = [b for _, b in zip(range(4), dm.train_dataloader())]
    model = tiny(task="rte")
    memel = MEmeL(**dict(MEMEL, late_start=1))
    memel.train()
    checked = 0
    for batch in batches:
        z = torch.randn(*batch["input_ids"].shape, 32)
        z[batch["attention_mask"] == 0] = 1e3
        out = memel(z, batch["attention_mask"])
        changed = (out != z).any(-1)
        assert not bool(changed[batch["attention_mask"] == 0].any())
        checked += int(changed.sum())
    assert checked > 0


# ---------------------------------------------------------------------- metrics
def test_metrics_against_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    m = glue_metrics("cola")
    m.update(torch.tensor(p), torch.tensor(y))
    assert float(m.compute()["mcc"]) == pytest.approx(matthews_corrcoef(y, p), abs=1e-6)
    for task in ("mrpc", "qqp"):
        m = glue_metrics(task)
        m.update(torch.tensor(p[:120]), torch.tensor(y[:120]))
        m.update(torch.tensor(p[120:]), torch.tensor(y[120:]))
        out = m.compute()
        assert float(out["acc"]) == pytest.approx(accuracy_score(y, p), abs=1e-6)
        assert float(out["f1"]) == pytest.approx(f1_score(y, p), abs=1e-6)
    y3 = rng.integers(0, 3, 200)
    p3 = np.where(rng.random(200) < 0.5, y3, rng.integers(0, 3, 200))
    for task in ("mnli", "ax", "qnli", "rte", "sst2", "wnli"):
        spec = glue_task(task)
        yy, pp = (y3, p3) if spec.num_labels == 3 else (y, p)
        m = glue_metrics(task)
        m.update(torch.tensor(pp), torch.tensor(yy))
        assert set(m.compute()) == {"acc"}
        assert float(m.compute()["acc"]) == pytest.approx(accuracy_score(yy, pp), abs=1e-6)
    s = rng.uniform(0, 5, 150)
    ps = s + rng.normal(0, 1.0, 150)
    m = glue_metrics("stsb")
    m.update(torch.tensor(ps, dtype=torch.float32), torch.tensor(s, dtype=torch.float32))
    out = m.compute()
    assert float(out["pearson"]) == pytest.approx(pearsonr(ps, s)[0], abs=1e-5)
    assert float(out["spearman"]) == pytest.approx(spearmanr(ps, s)[0], abs=1e-5)


# ---------------------------------------------------------------------- fit on real RTE
def test_fit_rte_logs_memel_tags_metric_and_writes_submission(
    shared_data: Path, rte_tokenizer: str, tmp_path: Path
) -> None:
    dm = GlueDataModule("rte", data_dir=str(shared_data / "glue" / "RTE"), tokenizer=rte_tokenizer,
                        batch_size=8, max_length=48, predict_split="dev")
    model = tiny(task=None)  # the data module hands over its task
    callback = MEmeLCallback(memel=MEMEL, log_every_n_steps=2, hist_every_n_steps=4)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    t = trainer(tmp_path, [callback], max_steps=8, limit_train_batches=8, limit_val_batches=5,
                logger=logger, log_every_n_steps=2)
    t.fit(model, dm)
    assert model.hparams.task == "rte" and model.spec.num_labels == 2
    tags = set(read_events(logger.log_dir).Tags()["scalars"])
    for tap in model.memel_taps():
        for metric in ("selected_frac", "mono_ratio", "phi_mean", "phi_max", CONCENTRATION):
            assert f"memel/{callback.labels[tap]}/{metric}" in tags
    assert {"memel/mono_ratio", f"memel/{CONCENTRATION}", "train_loss", "val_loss", "val_acc", "val_score"} <= tags
    selected = read_events(logger.log_dir).Scalars(f"memel/{callback.labels[model.memel_taps()[0]]}/selected_frac")
    assert any(e.value > 0 for e in selected)

    # The logged accuracy is sklearn's accuracy of the model's dev predictions.
    writer = GlueSubmissionWriter(output_dir=str(tmp_path / "sub"))
    t2 = trainer(tmp_path, [writer])
    metrics = t2.validate(model, dm, verbose=False)[0]
    t2.predict(model, dm, return_predictions=False)
    dev = read_glue_tsv(shared_data / "glue" / "RTE" / "dev.tsv", "rte")
    rows = (tmp_path / "sub" / "RTE.dev.tsv").read_text().splitlines()  # dev predictions, not a submission
    assert rows[0] == "index\tprediction" and len(rows) == len(dev) + 1
    got = dict(r.split("\t") for r in rows[1:])
    assert set(got.values()) <= {"entailment", "not_entailment"}
    assert [int(i) for i in got] == sorted(dev.index)
    pred = [glue_task("rte").labels.index(got[str(i)]) for i in dev.index]
    assert metrics["val_acc"] == pytest.approx(accuracy_score(dev.labels, pred), abs=1e-6)

    # The adopted task is in the checkpoint: the model reloads without a data module.
    t.save_checkpoint(tmp_path / "m.ckpt")
    again = GlueClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert again.hparams.task == "rte"
    x = dm.splits["dev"][:3]
    batch = dm._collator()(x)
    again.eval(), model.eval()
    torch.testing.assert_close(again(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                               model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))


def test_model_and_data_task_must_agree(tmp_path: Path, rte_tokenizer: str, shared_data: Path) -> None:
    dm = GlueDataModule("sst2", data_dir=str(shared_data / "glue" / "SST-2"), tokenizer=rte_tokenizer)
    with pytest.raises(ValueError, match="built for task 'rte' but the data module has task 'sst2'"):
        trainer(tmp_path, [], max_steps=1).fit(tiny(task="rte"), dm)
    with pytest.raises(RuntimeError, match="has no task yet"):
        tiny(task=None).memel_taps()


# ---------------------------------------------------------------------- submissions
@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_submission_file_format(task: str, tmp_path: Path) -> None:
    from memel_lightning.data.glue_submission import write_submission

    spec = glue_task(task)
    index = [5, 0, 2, 1]
    values = [4.2, 7.5, -1.0, 0.1234] if spec.is_regression else [i % spec.num_labels for i in (1, 0, 2, 1)]
    path = write_submission(tmp_path / "x.tsv", spec, index, values)
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == sorted(index)
    by_index = dict(zip(index, values))
    for i, pred in rows:
        if spec.is_regression:
            assert pred == f"{min(5.0, max(0.0, by_index[int(i)])):.3f}"
        else:
            assert pred == spec.labels[by_index[int(i)]]
    expected_names = {"rte": {"entailment", "not_entailment"}, "qnli": {"entailment", "not_entailment"},
                      "mnli": {"entailment", "neutral", "contradiction"}, "ax": {"entailment", "neutral", "contradiction"}}
    if not spec.is_regression:
        assert set(spec.labels) == expected_names.get(task, {"0", "1"})


def test_mnli_predict_writes_matched_and_mismatched(tmp_path: Path) -> None:
    from tests.glue_fixtures import write_task

    tok = make_tokenizer(tmp_path / "tok")
    write_task("mnli", tmp_path / "MNLI")
    dm = GlueDataModule("mnli", data_dir=str(tmp_path / "MNLI"), tokenizer=tok, batch_size=4)
    model = tiny(task=None, vocab_size=200)
    t = trainer(tmp_path, [GlueSubmissionWriter(str(tmp_path / "sub"))], max_steps=2)
    t.fit(model, dm)
    logged = set(t.callback_metrics)
    assert {"val_acc_m", "val_acc_mm", "val_loss_m", "val_loss_mm", "val_score"} <= logged
    t.predict(model, dm, return_predictions=False)
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv"):
        lines = (tmp_path / "sub" / name).read_text().splitlines()
        assert len(lines) == 7 and all(r.split("\t")[1] in {"entailment", "neutral", "contradiction"} for r in lines[1:])
    # A model fine-tuned on MNLI predicts the diagnostic set AX.
    write_task("ax", tmp_path / "AX")
    dm_ax = GlueDataModule("ax", data_dir=str(tmp_path / "AX"), tokenizer=tok, batch_size=4)
    t.predict(model, dm_ax, return_predictions=False)
    assert len((tmp_path / "sub" / "AX.tsv").read_text().splitlines()) == 7


# ---------------------------------------------------------------------- configs and CLI
CONFIGS = ["bert_glue_memel", "bert_glue_baseline", "bert_glue_naive_a", "bert_glue_naive_b"]


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_parse_with_task_and_data_dir_overrides(config: str, tmp_path: Path) -> None:
    from memel_lightning.cli import main

    tasks = sorted(GLUE_TASKS) if config == "bert_glue_memel" else ["cola", "mnli"]
    for task in tasks:
        cli = main(args=["--config", str(REPO / "configs" / f"{config}.yaml"), "--data.task", task,
                         "--data.data_dir", str(tmp_path / task), "--trainer.logger", "false"], run=False)
        assert cli.datamodule.task == task and str(cli.datamodule.data_dir) == str(tmp_path / task)
        assert cli.model.hparams.task is None  # taken from the data module at setup
        memel = [c for c in cli.trainer.callbacks if isinstance(c, MEmeLCallback)]
        if config == "bert_glue_baseline":
            assert not memel
        else:
            expected = {"bert_glue_memel": "reverse", "bert_glue_naive_a": "mean_nograd",
                        "bert_glue_naive_b": "mean_passthrough"}[config]
            settings = memel_settings_of(memel[0])
            assert settings["strategy"] == expected and settings["variable_shape"]
        assert any(isinstance(c, GlueSubmissionWriter) for c in cli.trainer.callbacks)


def test_tiny_fit_and_predict_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    """The memel config, only task/data_dir (and the tiny model) overridden, on a non-RTE task."""
    import json

    from memel_lightning.cli import main
    from tests.glue_fixtures import write_task

    monkeypatch.chdir(tmp_path)  # the config's relative runs/ and submissions/ folders
    tok = make_tokenizer(tmp_path / "tok")
    write_task("stsb", tmp_path / "STS-B", n=12)
    common = ["--config", str(REPO / "configs" / "bert_glue_memel.yaml"), "--data.task", "stsb",
              "--data.data_dir", str(tmp_path / "STS-B"), "--data.tokenizer", tok, "--data.batch_size", "4",
              "--model.init_args.pretrained", "null",
              "--model.init_args.config", json.dumps(dict(TINY_BERT, vocab_size=200)),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
              "--trainer.accelerator", "cpu"]
    cli = main(args=["fit", *common, "--trainer.max_epochs", "2"])
    assert {"val_pearson", "val_spearman", "val_score"} <= set(cli.trainer.callback_metrics)
    memel = [c for c in cli.trainer.callbacks if isinstance(c, MEmeLCallback)][0]
    assert memel.tap_names == [f"model.bert.encoder.layer.{i}" for i in (1, 2, 3, 4)]
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert ckpt
    main(args=["predict", *common, "--ckpt_path", ckpt])
    lines = (tmp_path / "runs" / "submissions" / "bert_glue_memel" / "STS-B.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 13
    assert all(0.0 <= float(r.split("\t")[1]) <= 5.0 for r in lines[1:])


def test_linear_warmup_and_decay_match_transformers() -> None:
    from transformers import get_linear_schedule_with_warmup

    model = tiny(warmup_ratio=0.1, lr=2e-5)

    class FakeTrainer:
        estimated_stepping_batches = 50

    model._trainer = FakeTrainer()
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    for name, p in model.model.named_parameters():
        assert (id(p) in no_decay) == (name.endswith("bias") or "LayerNorm" in name)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    ref = get_linear_schedule_with_warmup(ref_opt, num_warmup_steps=5, num_training_steps=50)
    for _ in range(50):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-12)
        opt.step(), sched.step(), ref_opt.step(), ref.step()


def _tiny_cli_args(tmp_path: Path, config: str, task: str, folder: str) -> list[str]:
    import json

    return ["--config", str(REPO / "configs" / config), "--data.task", task,
            "--data.data_dir", str(tmp_path / folder), "--data.tokenizer", make_tokenizer(tmp_path / "tok"),
            "--data.batch_size", "4", "--model.init_args.pretrained", "null",
            "--model.init_args.config", json.dumps(dict(TINY_BERT, num_hidden_layers=2, vocab_size=200)),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.accelerator", "cpu"]


@pytest.mark.parametrize("task", ["RTE", "SST-2", "MRPC"])
def test_task_names_as_glue_writes_them(task: str, tmp_path: Path) -> None:
    """``--data.task RTE`` used to die in Lightning's hparams merge (data "RTE", model "rte")."""
    from memel_lightning.cli import main
    from tests.glue_fixtures import write_task

    spec = glue_task(task)
    write_task(spec.name, tmp_path / spec.folder, n=8)
    cli = main(args=["fit", *_tiny_cli_args(tmp_path, "bert_glue_memel.yaml", task, spec.folder),
                     "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"])
    assert cli.trainer.global_step == 2
    assert cli.model.hparams.task == cli.datamodule.hparams.task == spec.name


def test_probe_predict_and_run_record_on_a_glue_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    from memel_lightning.cli import main

    def probe_main(argv):  # the command line's own dispatch: ``cli.py probe ...``
        return main(["probe", *argv])
    from tests.glue_fixtures import write_task

    monkeypatch.chdir(tmp_path)
    write_task("rte", tmp_path / "RTE", n=12)
    args = _tiny_cli_args(tmp_path, "bert_glue_memel.yaml", "rte", "RTE")
    cli = main(args=["fit", *args, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1"])
    run = Path(cli.trainer.log_dir)
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    # probe: no --config needed (the checkpoint carries its config), the network is built for the task
    out = probe_main(["--ckpt_path", ckpt, "--out", str(tmp_path / "probe"), "--max_batches", "1"])
    assert (tmp_path / "probe" / "probe.md").is_file() and out["results"]
    assert set(out["results"]) == {f"model.bert.encoder.layer.{i}" for i in (0, 1)}
    # ... and with the run's own config.yaml; a config of another run is refused
    probe_main(["--config", str(run / "config.yaml"), "--ckpt_path", ckpt, "--out", str(tmp_path / "p2"),
                "--max_batches", "1"])
    with pytest.raises(SystemExit, match=r"is not the config .* was trained with \(memel.strategy: 'mean_nograd'"):
        probe_main(["--config", str(REPO / "configs" / "bert_glue_naive_a.yaml"), "--ckpt_path", ckpt])
    # a second run into the same folder (fixed version) keeps the first run's config.yaml
    first = (run / "config.yaml").read_text()
    main(args=["fit", *args, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--memel.k", "2",
               "--trainer.logger.init_args.version", run.name])
    assert (run / "config.yaml").read_text() == first
    assert "k: 2" in (run / "config_1.yaml").read_text()
    # predict: no test file -> the error says how to predict the dev set; dev predictions get their own name
    with pytest.raises(FileNotFoundError, match=r"test\.tsv.*--data\.predict_split dev"):
        (tmp_path / "RTE" / "test.tsv").unlink()
        main(args=["predict", *args, "--ckpt_path", ckpt])
    main(args=["predict", *args, "--ckpt_path", ckpt, "--data.predict_split", "dev"])
    written = sorted(p.name for p in (tmp_path / "runs" / "submissions" / "bert_glue_memel").iterdir())
    assert written == ["RTE.dev.tsv"]


def test_failed_fit_leaves_no_empty_version_folder(tmp_path: Path) -> None:
    from memel_lightning.cli import main
    from tests.glue_fixtures import write_task

    write_task("rte", tmp_path / "RTE", n=4)
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")  # header only
    with pytest.raises(ValueError, match=r"train\.tsv: only a header line, no examples"):
        main(args=["fit", *_tiny_cli_args(tmp_path, "bert_glue_memel.yaml", "rte", "RTE"), "--trainer.max_steps", "1"])
    assert not list((tmp_path / "runs" / "bert_glue_memel").glob("version_*"))


def test_loading_a_pretrained_folder_prints_one_plain_line(tmp_path: Path, capfd, caplog) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")
    capfd.readouterr()
    with caplog.at_level("INFO"):
        GlueClassifier(task="rte", pretrained=str(tmp_path / "bert"))
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert "LOAD REPORT" not in text and "\x1b[" not in text and "Loading weights" not in text
    assert "newly initialised: classifier.bias, classifier.weight" in caplog.text
