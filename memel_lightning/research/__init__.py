"""Research tooling: comparison and MEmeL-Tune sweeps, their statistics and reports.

Modules, one job each (imports go down this list, never up, and never to
``memel_lightning.cli``): :mod:`.spec` (sweep files), :mod:`.compose` (a run's config
from the base config and dotted keys), :mod:`.events` (TensorBoard scalars),
:mod:`.runs` (run states and ``runs.csv``), :mod:`.stats` (selection, paired tests),
:mod:`.report` (``report.{md,csv,png}``), :mod:`.launch` (in-process, subprocess,
submitit), :mod:`.runner` (a sweep end to end), :mod:`.cli` (``sweep_main``).

Example:
    >>> from memel_lightning.research import paired_test
    >>> paired_test([1.0, 2.0], [1.0, 1.0]).diff
    0.5
"""
from .spec import SweepConfigError, SweepSpec, Variant, load_sweep
from .stats import paired_test

__all__ = ["SweepConfigError", "SweepSpec", "Variant", "load_sweep", "paired_test"]
