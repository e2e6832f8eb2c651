"""Every YAML under configs/ (but sweeps/) parses with the CLI and instantiates its model, data
module and callbacks (``run=False``), on the overrides below where the full config needs a
GPU cluster, real data or a 410M-parameter model. Overlays (``extends:``) are checked against
the full configs they replaced, and ``--memel.<setting>`` lands on the MEmeLCallback."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from memel_lightning.callback import MEmeLCallback
from memel_lightning.cli import ConfigError, expand_configs, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# sweeps/ holds sweep files, convgru_parts/ config sections that the ConvGRU configs include
ALL = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")
             if "sweeps" not in p.parts and "convgru_parts" not in p.parts)

CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]
# How each config is scaled down to instantiate on a 2-core CPU without data ("{tmp}": a
# temporary folder; "{imagenet}": a generated 4-class image tree).
OVERRIDES: dict[str, list[str]] = {
    "swin_baseline.yaml": [*CPU, "--data.init_args.root={imagenet}", "--data.init_args.num_workers=0"],
    "swin_memel.yaml": [*CPU, "--data.init_args.root={imagenet}", "--data.init_args.num_workers=0"],
    "swin_paper_memel.yaml": [*CPU, "--data.init_args.root={imagenet}", "--data.init_args.num_workers=0"],
    "pythia70m_baseline.yaml": [*CPU, "--model.init_args.model=tiny"],
    "pythia70m_l2e.yaml": [*CPU, "--model.init_args.model=tiny"],
    "pythia410m_baseline.yaml": [*CPU, "--model.init_args.model=tiny"],
    "pythia410m_l2e.yaml": [*CPU, "--model.init_args.model=tiny"],
    "pythia2.8b_baseline.yaml": [*CPU, "--model.init_args.model=tiny"],
    "pythia2.8b_l2e.yaml": [*CPU, "--model.init_args.model=tiny"],
    "convgru_hko7_memel.yaml": [*CPU],
    # overlays are not standalone: stacked on a base
    "overlays/memel.yaml": ["--config", str(CONFIGS / "quickstart_baseline.yaml")],
    "overlays/l2e.yaml": ["--config", str(CONFIGS / "pythia70m_baseline.yaml"), *CPU, "--model.init_args.model=tiny"],
}
# An overlay goes after its base.
BASE_FIRST = {"overlays/memel.yaml", "overlays/l2e.yaml"}
# Configs whose data module checks its data at construction: (reason) -> skipped if absent.
NEEDS_DATA = {"convgru_hko7_memel.yaml": "the real HKO-7 data set"}


def _imagenet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(4):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(folder / "0.png")
    return root


def memel_settings_of(cb: MEmeLCallback) -> dict[str, Any]:
    """The callback's MEmeL settings as a dict, for the typed core (``cb.memel``) or the old one."""
    cfg = getattr(cb, "memel", None)
    if cfg is not None and hasattr(cfg, "as_dict"):
        return cfg.as_dict()
    return dict(getattr(cb, "memel_kwargs", {}))


def instantiate(config: str, tmp_path: Path, *extra: str):
    subs = {"{tmp}": str(tmp_path), "{imagenet}": str(_imagenet(tmp_path / "imagenet"))}
    over = [o for o in OVERRIDES.get(config, [])]
    for key, value in subs.items():
        over = [o.replace(key, value) for o in over]
    own = ["--config", str(CONFIGS / config)]
    args = (over[:2] + own + over[2:]) if config in BASE_FIRST else (own + over)
    return main(args=[*args, f"--trainer.default_root_dir={tmp_path}", *extra], run=False)


def test_every_config_is_covered() -> None:
    assert {"quickstart.yaml", "bert_glue_memel.yaml", "overlays/memel.yaml", "swin_memel.yaml"} <= set(ALL)
    assert not set(OVERRIDES) - set(ALL), "the table names a config that no longer exists"


@pytest.mark.parametrize("config", ALL)
def test_config_parses_and_instantiates(config: str, tmp_path: Path) -> None:
    if config in NEEDS_DATA:
        pytest.importorskip("memel_lightning.data.hko7")
    try:
        cli = instantiate(config, tmp_path)
    except Exception as err:  # noqa: BLE001 - only the documented data-less case may fail
        if config in NEEDS_DATA and "HKO" in str(err).upper():
            pytest.skip(f"{config} needs {NEEDS_DATA[config]}: {str(err).splitlines()[0][:120]}")
        raise
    assert cli.model is not None and cli.datamodule is not None
    memels = [c for c in cli.trainer.callbacks if isinstance(c, MEmeLCallback)]
    is_memel = any(w in config for w in ("memel", "l2e", "naive", "quickstart.yaml", "toy"))
    assert len(memels) == (1 if is_memel else 0), config
    if memels:
        # the MEmeL callback is the config's last (so a trailing --trainer.callbacks.init_args.X
        # lands on it; Lightning itself moves checkpoint callbacks to the end of the trainer's list)
        entries = cli.config["trainer"]["callbacks"]
        assert str(entries[-1].class_path).endswith("MEmeLCallback"), [e.class_path for e in entries]


def test_overlays_reproduce_the_full_configs_they_replaced(tmp_path: Path) -> None:
    naive = instantiate("bert_glue_naive_a.yaml", tmp_path)
    (cb,) = [c for c in naive.trainer.callbacks if isinstance(c, MEmeLCallback)]
    settings = memel_settings_of(cb)
    assert (settings["strategy"], settings["variable_shape"], settings["k"], settings["late_start"]) == (
        "mean_nograd", True, 1, 10)
    assert naive.trainer.logger.name == "bert_glue_naive_a" and naive.trainer.logger.save_dir == str(Path("runs"))
    quick = instantiate("quickstart.yaml", tmp_path)
    (cb,) = [c for c in quick.trainer.callbacks if isinstance(c, MEmeLCallback)]
    assert cb.hist_every_n_steps == 50 and quick.trainer.max_epochs == 12
    assert quick.trainer.logger.name == "swin_digits_memel"
    big = instantiate("pythia410m_l2e.yaml", tmp_path)
    assert (big.trainer.accumulate_grad_batches, big.datamodule.batch_size, big.model.lr) == (8, 16, 3e-4)
    (cb,) = [c for c in big.trainer.callbacks if isinstance(c, MEmeLCallback)]
    assert memel_settings_of(cb)["selector"] == "moving_threshold" and cb.hist_every_n_steps == 1000


def test_paper_modes(tmp_path: Path) -> None:
    """GLUE paper mode: fixed padding to max_length, no padding mask, final-epoch weights; Swin
    paper mode: per-GPU statistics on a 64-image micro-batch x 16 accumulation steps."""
    import torch

    glue = instantiate("bert_glue_paper_memel.yaml", tmp_path)
    (cb,) = [c for c in glue.trainer.callbacks if isinstance(c, MEmeLCallback)]
    assert memel_settings_of(cb)["variable_shape"] is False
    assert glue.trainer.checkpoint_callback.monitor is None
    assert glue.model.memel_mask({"attention_mask": torch.ones(2, 3)}) is None
    collate = glue.datamodule._collator.__func__  # the collator pads every batch to max_length
    glue.datamodule._get_tokenizer = lambda: type("T", (), {"pad_token_id": 0})()
    batch = collate(glue.datamodule)([{"input_ids": [1, 2], "attention_mask": [1, 1], "idx": 0, "label": 1}])
    assert batch["input_ids"].shape == (1, 128) and int(batch["attention_mask"].sum()) == 2
    swin = instantiate("swin_paper_memel.yaml", tmp_path)
    (cb,) = [c for c in swin.trainer.callbacks if isinstance(c, MEmeLCallback)]
    assert cb.sync_stats is False and swin.trainer.accumulate_grad_batches == 16
    assert swin.datamodule.hparams.batch_size == 64


def test_memel_options_from_the_command_line(tmp_path: Path) -> None:
    cli = instantiate("bert_glue_memel.yaml", tmp_path, "--memel.k", "5", "--memel.delta", "2",
                      "--memel.hist_every_n_steps", "7")
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, MEmeLCallback)]
    settings = memel_settings_of(cb)
    assert (settings["k"], settings["delta"], settings["variable_shape"], cb.hist_every_n_steps) == (5, 2.0, True, 7)
    with pytest.raises(ConfigError, match=r"--memel.k: this config has no MEmeLCallback"):
        instantiate("bert_glue_baseline.yaml", tmp_path, "--memel.k", "5")


def test_pythia_demo_validation_does_not_depend_on_the_corpus_size() -> None:
    import yaml

    trainer = yaml.safe_load((CONFIGS / "pythia_l2e_demo.yaml").read_text())["trainer"]
    # an integer val_check_interval larger than an epoch is only allowed when it counts across epochs
    assert isinstance(trainer["val_check_interval"], int) and trainer["check_val_every_n_epoch"] is None


def test_extends_is_relative_to_the_overlay_and_detects_loops(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("trainer: {max_epochs: 3}\n")
    (tmp_path / "sub" / "over.yaml").write_text("extends: ../base.yaml\ntrainer: {max_steps: 2}\n")
    out = expand_configs(["fit", "--config", str(tmp_path / "sub" / "over.yaml"), "--x", "1"])
    assert out[:3] == ["fit", "--config", str(tmp_path / "sub" / ".." / "base.yaml")] and out[-2:] == ["--x", "1"]
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        expand_configs(["--config", str(tmp_path / "loop.yaml")])
    (tmp_path / "bad.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml.*does not exist"):
        expand_configs(["--config", str(tmp_path / "bad.yaml")])
