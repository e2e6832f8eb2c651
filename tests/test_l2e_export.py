"""export_hf: a CausalLM checkpoint -> a Hugging Face folder that transformers reloads with identical logits."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from memel_lightning.callback import MEmeLCallback
from memel_lightning.data.text import TextDataModule
from memel_lightning.export import ExportError, export_hf, export_main
from memel_lightning.models.causal_lm import CausalLM


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    docs = tmp / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i}  # document {i}\n" * 20)
    dm = TextDataModule(files=str(docs / "*.txt"), vocab_size=300, seq_len=16, batch_size=2,
                        val_fraction=0.0, cache_dir=str(tmp / "cache"))
    lm = CausalLM("tiny", config_overrides={"vocab_size": 384})
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[MEmeLCallback(taps="default", log_every_n_steps=1)])
    trainer.fit(lm, datamodule=dm)
    ckpt = tmp / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, lm, dm


def test_reloaded_folder_gives_identical_logits_and_tokens(trained_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt, lm, dm = trained_ckpt
    out = export_hf(ckpt, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "def f3(x):\n    return x * 3"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == dm.load_tokenizer().encode(text, add_special_tokens=False).ids
    x = torch.tensor([ids])
    lm.eval()
    model.eval()
    with torch.no_grad():
        expected = lm(x)
        got = model(input_ids=x).logits
    assert torch.equal(got, expected)
    assert model.config.eos_token_id == tok.eos_token_id == dm.eos_id


def test_cli_export_and_errors(trained_ckpt, tmp_path):
    ckpt, _, dm = trained_ckpt
    tok_file = dm.cache_dir / "tokenizer.json"
    out = export_main(["--ckpt_path", str(ckpt), "--out", str(tmp_path / "o"), "--tokenizer", str(tok_file),
                       "--dtype", "bfloat16"])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    with pytest.raises(ExportError, match="consolidate"):
        export_hf(tmp_path, tmp_path / "x")
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"net.w": torch.zeros(1)}, "hyper_parameters": {"x": 1}}, bad)
    with pytest.raises(ExportError, match="not a CausalLM checkpoint"):
        export_hf(bad, tmp_path / "y")
