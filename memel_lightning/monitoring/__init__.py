"""TensorBoard views of MEmeL runs: readable tap labels, the Custom Scalars layout,
layer x step heatmaps, log10(phi) histograms, HParams and nowcasting frame images
(docs/monitoring.md). The callback calls them; each piece also works on any
``torch.utils.tensorboard.SummaryWriter``."""
from .dashboard import Dashboard
from .frames import nowcast_frames_image
from .heatmap import step_heatmap
from .history import StepHistory
from .hparams import final_metric_tags, flat_hparams, memel_hparams, write_hparams
from .labels import short_labels
from .lightning_board import TrainerBoard
from .layout import MEMEL_CHARTS, memel_layout
from .phi_histogram import log10_phi, phi_histogram_image

__all__ = [
    "Dashboard", "MEMEL_CHARTS", "StepHistory", "TrainerBoard", "final_metric_tags", "flat_hparams", "log10_phi",
    "memel_hparams", "memel_layout", "nowcast_frames_image", "phi_histogram_image", "short_labels",
    "step_heatmap", "write_hparams",
]
