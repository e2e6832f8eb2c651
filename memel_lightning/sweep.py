"""Former home of the sweep tooling, now :mod:`memel_lightning.research`; kept for old imports.

``from memel_lightning.sweep import read_scalars`` (analysis scripts) and ``sweep_main``
keep working; new code imports from :mod:`memel_lightning.research` and its modules.
"""
from .research.cli import sweep_main
from .research.compose import set_dotted, variant_config
from .research.events import read_scalars, scalar_tags
from .research.runner import run_sweep
from .research.runs import DONE
from .research.spec import SweepConfigError, SweepSpec, Variant, load_sweep

__all__ = ["DONE", "SweepConfigError", "SweepSpec", "Variant", "load_sweep", "read_scalars", "run_sweep",
           "scalar_tags", "set_dotted", "sweep_main", "variant_config"]
