"""Research analysis: neuron probes on trained checkpoints, the ablation probe, and the
ground-truth measures of the polysemantic toy model."""
from .ground_truth import (
    NeuronTruth,
    SelectionQuality,
    feature_response,
    mass_share,
    neuron_truth,
    phi_selection_quality,
    set_max_phi,
    true_kill_rates,
    weight_share,
)

__all__ = [
    "NeuronTruth",
    "SelectionQuality",
    "feature_response",
    "mass_share",
    "neuron_truth",
    "phi_selection_quality",
    "set_max_phi",
    "true_kill_rates",
    "weight_share",
]
