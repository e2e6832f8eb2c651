"""Base configs in the CLI's own syntax (overlays that ``extends`` other files, ``callbacks+``,
a ``memel`` shortcut) are resolved by the CLI before a variant edits them."""
from pathlib import Path

import pytest
import yaml

from memel_lightning.cli import main
from memel_lightning.research.compose import load_base_config, needs_resolution, variant_config
from memel_lightning.research.launch import resolved_config
from memel_lightning.research.spec import SweepConfigError, Variant
from tests.tb_utils import scalar_tags

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "configs" / "toy_memel.yaml"


@pytest.mark.parametrize("config, expected", [
    ({"trainer": {"max_epochs": 1}, "model": {}}, False),
    ({"extends": ["base.yaml", "overlays/memel.yaml"], "trainer": {}}, True),
    ({"trainer": {"callbacks+": [{"class_path": "x"}]}}, True),
    ({"trainer": {}, "memel": {"k": 5}}, True),
])
def test_which_configs_need_the_cli(config, expected):
    assert needs_resolution(config) is expected


def test_overlays_go_through_the_resolver(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("extends: [base.yaml]\nmemel: {k: 5}\n")
    seen = []

    def resolve(path):
        seen.append(path)
        return {"trainer": {"max_epochs": 2}}

    assert load_base_config(overlay, resolve=resolve) == {"trainer": {"max_epochs": 2}} and seen == [str(overlay)]
    assert load_base_config(TOY, resolve=resolve)["model"]["class_path"].endswith("DigitsClassifier")
    assert len(seen) == 1  # a plain config is read as it is
    with pytest.raises(SweepConfigError, match="needs the CLI to resolve it"):
        load_base_config(overlay)
    with pytest.raises(SweepConfigError, match="did not resolve it"):
        load_base_config(overlay, resolve=lambda path: {"model": {}})


def test_a_resolved_config_takes_the_variant_edits_and_trains(tmp_path):
    resolved = resolved_config(str(TOY), fit=main)
    assert resolved["trainer"]["callbacks"][0]["init_args"]["memel"]["k"] == 1
    assert resolved["model"]["init_args"]["hidden_sizes"] == [128, 128]
    overrides = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 4, "trainer.limit_val_batches": 2,
                 "trainer.enable_progress_bar": False, "trainer.enable_checkpointing": False,
                 "trainer.accelerator": "cpu", "model.init_args.hidden_sizes": [16]}
    run = tmp_path / "run"
    config = variant_config(resolved, Variant("baseline", memel={"strategy": "none", "late_start": 0}), 1, run,
                            overrides)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(tmp_path / "c.yaml")])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["callbacks"][0]["init_args"]["memel"]["strategy"] == "none"
    assert "memel/mono_ratio" in scalar_tags(run)
