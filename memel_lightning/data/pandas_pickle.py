"""Read the ``DatetimeIndex`` of a pandas pickle of any age, without pandas' unpickler.

The HKO-7 release's frame lists were pickled by pandas 0.19 under Python 2; their
classes live in modules that today's pandas no longer has (``pandas.indexes.base``,
``pandas.tseries.index``, ``pandas.core.internals``), so ``pd.read_pickle`` fails with
``No module named 'pandas.indexes'``. :func:`read_datetime_index` unpickles such a file
with a *restricted* unpickler: numpy arrays are rebuilt by numpy, every pandas class or
constructor becomes an inert record of its pickled state, and any other global is
refused, so the file can run no code. The index is then read from the pickled block
manager state (layout ``"0.14.1"``, written by pandas 0.14 to 0.25): a DataFrame's rows
are ``axes[1]``, a Series' ``axes[0]``; a pickled ``DatetimeIndex`` holds its values as a
``datetime64[ns]`` array (UTC when ``tz`` is set, as pandas stores them).

A pickle that names a global this reader does not know (one written by a recent pandas)
is read with ``pd.read_pickle`` instead. Nothing is written next to the file.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Union

import numpy as np

try:  # numpy >= 2 moved the module; old pickles name numpy.core.multiarray
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar

__all__ = ["read_datetime_index", "LegacyPickleError"]

PathLike = Union[str, os.PathLike]

_NUMPY = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("__builtin__", "slice"): slice,
    ("builtins", "slice"): slice,
}
# pandas 0.14 - 0.19 locations of the classes a frame list pickles.
_PANDAS_CLASSES = {
    "pandas.core.frame": {"DataFrame"},
    "pandas.core.series": {"Series"},
    "pandas.core.internals": {"BlockManager", "SingleBlockManager"},
    "pandas.indexes.base": {"Index"},
    "pandas.indexes.numeric": {"Int64Index", "Float64Index"},
    "pandas.indexes.range": {"RangeIndex"},
    "pandas.core.index": {"Index", "Int64Index"},
    "pandas.tseries.index": {"DatetimeIndex"},
}
_PANDAS_CONSTRUCTORS = {
    "pandas.indexes.base": {"_new_Index"},
    "pandas.core.index": {"_new_Index"},
    "pandas.tseries.index": {"_new_DatetimeIndex"},
}


class LegacyPickleError(ValueError):
    """The pickle is not a frame list this reader can decode (message names the file)."""


class _UnknownGlobal(Exception):
    pass


class _Pickled:
    """Inert stand-in for a pandas object: keeps the state pickle gave it, runs nothing."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _PickledIndex:
    """What ``_new_Index(cls, d)`` / ``_new_DatetimeIndex(cls, d)`` were called with."""

    def __init__(self, cls: type, d: dict) -> None:
        self.kind = getattr(cls, "qualname", "?")
        self.d = d


_STANDINS: dict[str, type] = {}


def _standin(qualname: str) -> type:
    if qualname not in _STANDINS:
        _STANDINS[qualname] = type(qualname.rsplit(".", 1)[-1], (_Pickled,), {"qualname": qualname})
    return _STANDINS[qualname]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY:
            return _NUMPY[(module, name)]
        if name in _PANDAS_CLASSES.get(module, ()):
            return _standin(f"{module}.{name}")
        if name in _PANDAS_CONSTRUCTORS.get(module, ()):
            return _PickledIndex
        raise _UnknownGlobal(f"{module}.{name}")


def _manager_axes(manager: Any, path: Path) -> list:
    state = getattr(manager, "state", None)
    if isinstance(state, tuple) and len(state) >= 4 and isinstance(state[3], dict) and "0.14.1" in state[3]:
        return list(state[3]["0.14.1"]["axes"])
    raise LegacyPickleError(f"pandas pickle {path}: unsupported block-manager layout (expected pandas 0.14-0.25)")


def _to_datetime_index(index: Any, path: Path) -> Any:
    import pandas as pd

    if not isinstance(index, _PickledIndex):
        raise LegacyPickleError(f"pandas pickle {path}: its index is not a pandas Index ({type(index).__name__})")
    if not index.kind.endswith("DatetimeIndex"):
        raise LegacyPickleError(f"pandas pickle {path} must be indexed by datetimes, got a {index.kind.rsplit('.', 1)[-1]}")
    values = np.asarray(index.d["data"])
    if values.dtype.kind != "M":
        raise LegacyPickleError(f"pandas pickle {path}: DatetimeIndex data has dtype {values.dtype}, not datetime64")
    out = pd.DatetimeIndex(values.astype("datetime64[ns]"), name=index.d.get("name"))
    tz = index.d.get("tz")
    return out if tz is None else out.tz_localize("UTC").tz_convert(tz)


def read_datetime_index(path: PathLike) -> Any:
    """The ``pandas.DatetimeIndex`` of a pickled DataFrame, Series or DatetimeIndex, from
    any pandas version (module docstring), exactly as stored (not sorted, not deduplicated).

    Example:
        >>> import pandas as pd, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "frames.pkl")
        >>> pd.DataFrame({"x": [1, 2]}, index=pd.to_datetime(["2009-03-01 00:06", "2009-03-01 00:00"])).to_pickle(path)
        >>> [str(t) for t in read_datetime_index(path)]
        ['2009-03-01 00:06:00', '2009-03-01 00:00:00']
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pandas pickle {path} does not exist")
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except _UnknownGlobal:
        obj = None  # a recent pandas wrote it: its own unpickler knows its classes
    except Exception as exc:  # truncated or not a pickle at all
        raise LegacyPickleError(f"pandas pickle {path} cannot be read: {type(exc).__name__}: {exc}") from None
    if obj is None:
        try:
            obj = pd.read_pickle(path)
        except Exception as exc:
            raise LegacyPickleError(f"pandas pickle {path} cannot be read: {type(exc).__name__}: {exc}") from None
        index = obj if isinstance(obj, pd.Index) else getattr(obj, "index", None)
        if not isinstance(index, pd.DatetimeIndex):
            got = type(obj).__name__ + ("" if index is None else f" with a {type(index).__name__}")
            raise LegacyPickleError(f"pandas pickle {path} must be a DataFrame/Series indexed by datetimes, got {got}")
        return index
    if isinstance(obj, _PickledIndex):
        return _to_datetime_index(obj, path)
    kind = getattr(obj, "qualname", type(obj).__name__)
    if kind.endswith(("DataFrame", "Series")):
        state = getattr(obj, "state", None)
        manager = state.get("_data") if isinstance(state, dict) else None
        axes = _manager_axes(manager, path)
        return _to_datetime_index(axes[1] if kind.endswith("DataFrame") else axes[0], path)
    raise LegacyPickleError(f"pandas pickle {path} must be a DataFrame/Series indexed by datetimes, got {kind}")
