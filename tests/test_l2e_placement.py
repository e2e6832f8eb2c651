"""CausalLM placement presets (L2E Table 5), target ratios per size, memel_labels."""
from __future__ import annotations

import pytest
import torch

from memel_lightning.inhibition import resolve_taps
from memel_lightning.models.causal_lm import PLACEMENTS, PRESETS, CausalLM, placement_layers

PYTHIA = [name for name in PRESETS if name.startswith("pythia-")]


def test_pythia_70m_mid2_taps_the_mlp_activations_of_layers_2_and_3():
    lm = CausalLM(model="pythia-70m", placement="mid2")
    assert lm.memel_taps() == ["model.gpt_neox.layers.2.mlp.act", "model.gpt_neox.layers.3.mlp.act"]
    assert resolve_taps(lm, lm.memel_taps()) == lm.memel_taps()
    assert type(dict(lm.named_modules())[lm.memel_taps()[0]]).__name__ == "GELUActivation"


@pytest.mark.parametrize("name", PYTHIA)
def test_every_preset_taps_its_two_middle_layers_by_default(name):
    with torch.device("meta"):  # the published shapes without allocating them
        lm = CausalLM(model=name)
    n = lm.num_layers
    assert lm.hparams.placement == "mid2"
    assert lm.memel_taps() == [f"model.gpt_neox.layers.{i}.mlp.act" for i in (n // 2 - 1, n // 2)]
    assert resolve_taps(lm, lm.memel_taps()) == lm.memel_taps()
    for placement in PLACEMENTS:
        layers = placement_layers(placement, n)
        assert layers == sorted(set(layers)) and 0 <= layers[0] and layers[-1] < n


def test_placements_on_32_layers():
    assert placement_layers("mid2", 32) == [15, 16]
    assert placement_layers("mid_third", 32) == list(range(11, 22))  # 11 layers centred
    assert placement_layers("top_bottom", 32) == [0, 31]
    assert placement_layers("all", 32) == list(range(32))
    with pytest.raises(ValueError, match="placement must be one of"):
        CausalLM("tiny", placement="middle")


def test_target_ratio_defaults_per_size():
    ratios = {}
    for name in ("pythia-70m", "pythia-410m", "pythia-2.8b", "pythia-160m"):
        with torch.device("meta"):
            ratios[name] = CausalLM(model=name).memel_target_ratio
    assert ratios == {"pythia-70m": 0.01, "pythia-410m": 0.02, "pythia-2.8b": 0.03, "pythia-160m": 0.02}


def test_memel_labels_are_the_input_tokens_labels():
    lm = CausalLM("tiny")
    ids = torch.randint(0, 512, (2, 9))
    labels = torch.randint(-1, 4, (2, 9))
    assert lm.memel_labels({"input_ids": ids}) is None
    assert torch.equal(lm.memel_labels({"input_ids": ids, "feature_labels": labels}), labels[:, :-1])
