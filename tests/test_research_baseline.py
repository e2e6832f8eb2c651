"""The observed baseline (callback kept, ``strategy: none``) trains exactly like a run
without the callback, and logs the monosemanticity metrics the report compares."""
from pathlib import Path

import torch
import yaml

from memel_lightning.cli import main
from memel_lightning.research.cli import sweep_main
from tests.tb_utils import scalar_tags

REPO = Path(__file__).resolve().parents[1]


def test_observed_baseline_has_the_weights_of_a_run_without_callback(tmp_path):
    body = {
        "name": "observed",
        "base": str(REPO / "configs" / "toy_memel.yaml"),
        "metric": "val_acc",
        "seeds": [3],
        # every step records metrics and a phi histogram: the most the callback ever does
        "callback_args": {"log_every_n_steps": 1, "hist_every_n_steps": 1},
        "memel": {"late_start": 0, "forget_steps": 2},
        "overrides": {
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 8,
            "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False,
            "trainer.accelerator": "cpu",
            "model.init_args.hidden_sizes": [32, 32],
        },
        "variants": {"plain": {"callback": False}, "observed": {"memel": {"strategy": "none"}}},
    }
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(body))
    sweep_main(["--sweep", str(sweep), "--out", str(tmp_path / "out")], fit=main)
    weights = {}
    for variant in ("plain", "observed"):
        run = tmp_path / "out" / variant / "seed_3"
        (ckpt,) = sorted((run / "checkpoints").glob("*.ckpt"))
        weights[variant] = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert weights["plain"].keys() == weights["observed"].keys()
    for key, value in weights["plain"].items():
        assert torch.equal(value, weights["observed"][key]), key
    observed = scalar_tags(tmp_path / "out" / "observed" / "seed_3")
    assert {"memel/mono_ratio", "memel/hidden.0/mono_ratio", "memel/hidden.1/phi_max"} <= observed
    assert not any(t.startswith("memel/") for t in scalar_tags(tmp_path / "out" / "plain" / "seed_3"))
