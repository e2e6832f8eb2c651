"""End to end: a causal LM on the code-language set logs the labelled FKR (memel/fkr)."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest

from memel_lightning.callback import MEmeLCallback
from memel_lightning.data.text import TextDataModule
from memel_lightning.inhibition import MEmeLConfig
from memel_lightning.models.causal_lm import CausalLM


def _fit(tmp_path, code_languages: bool):
    source = dict(code_languages=True, code_docs_per_language=4, code_max_chars=1200) if code_languages else \
        dict(demo=True, max_documents=40)
    dm = TextDataModule(vocab_size=300, seq_len=16, batch_size=4, val_fraction=0.0,
                        cache_dir=str(tmp_path / "cache"), **source)
    lm = CausalLM("tiny", config_overrides={"vocab_size": 384})
    cb = MEmeLCallback(taps="default", log_every_n_steps=1, memel=MEmeLConfig(
        selector="moving_threshold", strategy="regularize", reduce_dims=(0,), late_start=1, target_ratio=0.05))
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[cb])
    trainer.fit(lm, datamodule=dm)
    return trainer.callback_metrics, lm, cb


def test_labelled_data_logs_fkr_per_tap_and_overall(tmp_path):
    metrics, lm, cb = _fit(tmp_path, code_languages=True)
    for tap in lm.memel_taps():
        assert 0.0 <= float(metrics[f"memel/{cb.labels[tap]}/fkr"]) <= 1.0  # short tap labels
    assert 0.0 <= float(metrics["memel/fkr"]) <= 1.0 and "memel/kill_concentration" in metrics


def test_unlabelled_data_logs_no_fkr(tmp_path):
    metrics, _, _ = _fit(tmp_path, code_languages=False)
    assert "memel/kill_concentration" in metrics
    assert not any(k.endswith("/fkr") or k == "memel/fkr" for k in metrics)


def test_demo_config_logs_fkr_then_curve_and_export_commands(tmp_path):
    """configs/pythia_l2e_demo.yaml, scaled down: memel/fkr in TensorBoard; then
    ``cli.py fkr_curve`` and ``cli.py export`` on its checkpoint."""
    import csv

    from memel_lightning.analysis.fkr_tracking import read_scalars
    from memel_lightning.cli import main

    main(["fit", "--config", "configs/pythia_l2e_demo.yaml", "--trainer.max_steps=6", "--trainer.val_check_interval=6",
          "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--model.init_args.model=tiny",
          "--model.init_args.config_overrides={vocab_size: 512}", "--data.init_args.vocab_size=400",
          "--data.init_args.code_docs_per_language=4", "--data.init_args.code_max_chars=1500",
          "--data.init_args.seq_len=32", "--data.init_args.batch_size=4", f"--data.init_args.cache_dir={tmp_path}/c",
          "--memel.late_start=2", "--memel.log_every_n_steps=1"])
    run = tmp_path / "pythia_l2e_demo" / "version_0"
    fkr = read_scalars(run, "memel/fkr")
    assert fkr and all(0.0 <= v <= 1.0 for v in fkr.values())
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    paths = main(["fkr_curve", "--ckpt_path", str(ckpt), "--labels", "code_languages", "--max_batches", "3",
                  "--out", str(tmp_path / "curve")])
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["tap"] for r in rows} == {"model.gpt_neox.layers.0.mlp.act", "model.gpt_neox.layers.1.mlp.act", "all"}
    assert paths["png"].is_file()
    out = main(["export", "--ckpt_path", str(ckpt), "--out", str(tmp_path / "hf")])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
