"""A bounded record of one vector per logged step, for images over training time."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


class StepHistory:
    """Columns ``(rows,)`` appended at increasing steps; at most ``max_columns`` kept.

    When full, neighbouring columns are merged pairwise (mean, or max with
    ``merge="max"``) and the step of the first of each pair kept, so a long run keeps
    its whole time span at a coarser resolution, in bounded memory.

    Example:
        >>> h = StepHistory(rows=2, max_columns=4)
        >>> for step in range(6):
        ...     h.append(step, [step, 10 * step])
        >>> h.steps, h.matrix()[0].tolist()
        ([0, 2, 4, 5], [0.5, 2.5, 4.0, 5.0])
    """

    def __init__(self, rows: int, max_columns: int = 512, merge: str = "mean") -> None:
        if rows < 1 or max_columns < 2:
            raise ValueError(f"StepHistory needs rows >= 1 and max_columns >= 2, got {rows}, {max_columns}")
        if merge not in ("mean", "max"):
            raise ValueError(f"StepHistory merge must be 'mean' or 'max', got {merge!r}")
        self.rows, self.max_columns, self.merge = int(rows), int(max_columns), merge
        self.steps: list[int] = []
        self._columns: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.steps)

    def append(self, step: int, column: Sequence[float]) -> None:
        values = np.asarray(column, dtype=np.float64).reshape(-1)
        if values.shape != (self.rows,):
            raise ValueError(f"StepHistory expects {self.rows} values per step, got {values.shape[0]}")
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"steps must increase: {step} after {self.steps[-1]}")
        if len(self.steps) == self.max_columns:
            self._halve()
        self.steps.append(int(step))
        self._columns.append(values)

    def matrix(self) -> np.ndarray:
        """``(rows, columns)``; NaN where a value was missing."""
        if not self._columns:
            return np.zeros((self.rows, 0))
        return np.stack(self._columns, axis=1)

    def _halve(self) -> None:
        reduce = np.nanmean if self.merge == "mean" else np.nanmax
        steps, columns = [], []
        for i in range(0, len(self.steps) - 1, 2):
            pair = np.stack(self._columns[i: i + 2])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN pair stays NaN
                columns.append(reduce(pair, axis=0))
            steps.append(self.steps[i])
        if len(self.steps) % 2:
            steps.append(self.steps[-1])
            columns.append(self._columns[-1])
        self.steps, self._columns = steps, columns

