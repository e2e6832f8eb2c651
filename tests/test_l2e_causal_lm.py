"""CausalLM (GPT-NeoX / Pythia presets) with MEmeL / L2E inhibition on every MLP activation."""
import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from memel_lightning import MEmeLCallback
from memel_lightning.callback import resolve_taps
from memel_lightning.models.causal_lm import PRESETS, CausalLM, gpt_neox_config
from tests.tb_utils import scalar_tags

try:  # the typed core names the old "fkr" (share of kills on often-selected neurons) kill_concentration
    from memel_lightning.inhibition import MEmeLConfig  # noqa: F401
    CONCENTRATION = "kill_concentration"
except ImportError:
    CONCENTRATION = "fkr"


class RandomTokens(Dataset):
    def __init__(self, n=32, length=17, vocab=512):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


def _trainer(tmp_path, callbacks, steps=4, logger=False, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=tmp_path, logger=logger,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      callbacks=callbacks, num_sanity_val_steps=0, limit_val_batches=2, **kw)


@pytest.mark.parametrize("name,layers,width,heads,params", [
    ("pythia-70m", 6, 512, 8, 70_426_624),
    ("pythia-160m", 12, 768, 12, 162_322_944),
    ("pythia-410m", 24, 1024, 16, 405_334_016),
    ("pythia-1b", 16, 2048, 8, 1_011_781_632),
    ("pythia-2.8b", 32, 2560, 32, 2_775_208_960),
])
def test_presets_have_published_shapes(name, layers, width, heads, params):
    from transformers import GPTNeoXForCausalLM

    cfg = gpt_neox_config(name)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (layers, width, heads)
    assert cfg.intermediate_size == 4 * width and cfg.vocab_size == 50304 and cfg.use_parallel_residual
    assert cfg.max_position_embeddings == 2048
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == params  # the Pythia paper's total parameter counts


def test_taps_resolve_on_every_layer():
    lm = CausalLM("tiny-4l", placement="all")  # the default placement (mid2): tests/test_l2e_placement.py
    taps = lm.memel_taps()
    assert taps == [f"model.gpt_neox.layers.{i}.mlp.act" for i in range(4)]
    assert resolve_taps(lm, taps) == taps
    assert resolve_taps(lm, ["model.gpt_neox.layers.*.mlp.act"]) == taps


def test_lr_schedule_warmup_then_cosine_to_floor():
    lm = CausalLM("tiny", warmup_ratio=0.1, min_lr_ratio=0.1)
    total = 100
    f = [lm.lr_factor(s, total) for s in range(total + 1)]
    # linear warm-up from 0 over 10 steps (as GPT-NeoX and transformers), then cosine
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[9] == pytest.approx(0.9)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[100] == pytest.approx(0.1)
    assert lm.lr == PRESETS["tiny"]["lr"]


@pytest.mark.parametrize("selector,strategy", [
    ("moving_threshold", "regularize"),
    ("topk", "reverse"),
    ("threshold", "mean_nograd"),
    ("moving_threshold", "mean_passthrough"),
    ("topk", "regularize"),
    ("moving_threshold", "none"),
])
def test_tiny_fit_with_each_selector_and_strategy(tmp_path, selector, strategy):
    from lightning.pytorch.loggers import TensorBoardLogger

    from tests.tb_utils import read_events

    lm = CausalLM("tiny")
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    cb = MEmeLCallback(taps="default", log_every_n_steps=1, hist_every_n_steps=100,
                       memel=dict(selector=selector, tau=4.0, target_ratio=0.05, strategy=strategy,
                                  reduce_dims=[0], late_start=1))
    loader = DataLoader(RandomTokens(), batch_size=4)
    logger = TensorBoardLogger(tmp_path, name="tb")
    _trainer(tmp_path, [cb], steps=4, logger=logger, log_every_n_steps=1).fit(lm, loader)
    assert all(torch.isfinite(p).all() for p in lm.parameters())
    assert any(not torch.equal(before[n], p) for n, p in lm.named_parameters())
    events = read_events(logger.log_dir)
    tags = set(events.Tags()["scalars"])
    for tap in lm.memel_taps():
        memel = cb.memel_for(tap)
        assert memel.moments.num_neurons == 4 * 64  # every MLP unit is a neuron, every token a sample
        concentration = [e.value for e in events.Scalars(f"memel/{cb.labels[tap]}/{CONCENTRATION}")]
        assert concentration and all(0.0 <= v <= 1.0 for v in concentration)
        selected = [e.value for e in events.Scalars(f"memel/{cb.labels[tap]}/selected_frac")]
        if selector != "threshold":
            assert max(selected) > 0
        assert (f"memel/{cb.labels[tap]}/reg_loss" in tags) == (strategy == "regularize")
    assert f"memel/{CONCENTRATION}" in tags and "memel/mono_ratio" in tags


def test_regularize_leaves_the_forward_unchanged(tmp_path):
    torch.manual_seed(0)
    lm = CausalLM("tiny")
    cb = MEmeLCallback(memel=dict(selector="moving_threshold", strategy="regularize", reduce_dims=[0],
                                  late_start=0, reg_lambda=10.0))
    trainer = _trainer(tmp_path, [cb], steps=1)
    trainer.fit(lm, DataLoader(RandomTokens(), batch_size=4))
    ids = RandomTokens()[0]["input_ids"][None, :-1]
    lm.train()
    plain = lm(ids)  # the fit's teardown removed the taps
    cb.setup(trainer, lm, "fit")  # ... which the callback's setup installs again
    hooked = lm(ids)
    cb.teardown(trainer, lm, "fit")
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)


def test_text_datamodule_fit_logs_l2e_tags(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from memel_lightning.data.text import TextDataModule

    docs = tmp_path / "docs.jsonl"
    import json
    import random

    rnd = random.Random(0)
    words = "the cat sat on a mat while dogs ran to the park and back again".split()
    with open(docs, "w") as f:
        for _ in range(80):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(rnd.randint(10, 60)))}) + "\n")
    dm = TextDataModule(files=str(docs), vocab_size=300, seq_len=16, batch_size=4, val_fraction=0.1,
                        cache_dir=str(tmp_path / "cache"))
    lm = CausalLM("tiny", config_overrides={"vocab_size": 384})
    cb = MEmeLCallback(log_every_n_steps=2, hist_every_n_steps=4,
                       memel=dict(selector="moving_threshold", strategy="regularize", reduce_dims=[0], late_start=1))
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _trainer(tmp_path, [cb], steps=5, logger=logger, log_every_n_steps=1, val_check_interval=5)
    trainer.fit(lm, datamodule=dm)
    tags = scalar_tags(logger.log_dir)
    for tap in lm.memel_taps():
        for metric in (CONCENTRATION, "selected_frac", "mono_ratio", "reg_loss"):
            assert f"memel/{cb.labels[tap]}/{metric}" in tags
    assert {f"memel/{CONCENTRATION}", "memel/mono_ratio", "train_loss", "val_loss", "val_ppl"} <= set(tags)
    small = CausalLM("tiny", config_overrides={"vocab_size": 256})
    with pytest.raises(ValueError, match="vocab_size"):
        _trainer(tmp_path, [], steps=1).fit(small, datamodule=dm)


def test_load_from_local_checkpoint_folder(tmp_path):
    src = CausalLM("tiny")
    src.model.save_pretrained(tmp_path / "ckpt")
    loaded = CausalLM(str(tmp_path / "ckpt"))
    assert loaded.memel_taps() == src.memel_taps()
    ids = torch.randint(0, 512, (1, 9))
    src.eval(), loaded.eval()
    torch.testing.assert_close(loaded(ids), src(ids))
    with pytest.raises(ValueError, match="unknown GPT-NeoX preset"):
        CausalLM(str(tmp_path / "missing"))


def test_callback_refuses_gradient_checkpointing(tmp_path):
    import lightning.pytorch as pl

    from memel_lightning.callback import MEmeLCallback

    model = CausalLM("tiny", gradient_checkpointing=True)
    cb = MEmeLCallback(taps="default")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="gradient checkpointing"):
        cb.setup(trainer, model, "fit")


def test_local_checkpoint_loads_in_training_mode(tmp_path):
    CausalLM("tiny").model.save_pretrained(tmp_path / "ckpt")
    model = CausalLM(str(tmp_path / "ckpt"))
    assert all(m.training for m in model.modules())
