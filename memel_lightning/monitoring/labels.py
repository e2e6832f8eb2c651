"""Short, readable tap labels for charts: the parts all tap names share are dropped."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


def short_labels(taps: Sequence[str], aliases: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``{tap: label}``: dotted tap names without their common leading and trailing parts.

    Every label keeps at least one part; when only bare indices would remain ("0", "1")
    the last shared part is kept for context ("blocks.0"). ``aliases`` (tap -> label)
    replace the computed labels of the taps they name. Labels are unique.

    Example:
        >>> short_labels(["model.layers.2.blocks.0", "model.layers.2.blocks.1"])
        {'model.layers.2.blocks.0': 'blocks.0', 'model.layers.2.blocks.1': 'blocks.1'}
        >>> list(short_labels(["net.encoder.0.cell.candidate", "net.encoder.1.cell.candidate",
        ...                    "net.forecaster.0.cell.candidate"]).values())
        ['encoder.0', 'encoder.1', 'forecaster.0']
        >>> short_labels(["bert.encoder.layer.4"], aliases={"bert.encoder.layer.4": "L4"})
        {'bert.encoder.layer.4': 'L4'}
    """
    taps = list(taps)
    if len(set(taps)) != len(taps):
        raise ValueError(f"tap names must be unique, got {taps}")
    aliases = dict(aliases or {})
    unknown = sorted(set(aliases) - set(taps))
    if unknown:
        raise ValueError(f"tap aliases name unknown taps {unknown}; the taps are {taps}")
    labels = dict(zip(taps, _strip_common(taps))) if taps else {}
    labels.update({tap: str(alias) for tap, alias in aliases.items()})
    clashes = sorted({label for label in labels.values() if list(labels.values()).count(label) > 1})
    if clashes:
        raise ValueError(f"tap labels must be unique; {clashes} label more than one tap (check the aliases)")
    if any(not label or "/" in label for label in labels.values()):
        raise ValueError(f"tap labels must be non-empty and contain no '/', got {sorted(labels.values())}")
    return labels


def _strip_common(taps: list[str]) -> list[str]:
    parts = [tap.split(".") for tap in taps]
    shortest = min(len(p) for p in parts)
    if len(parts) == 1:  # nothing to compare with: the last part (two if it is an index)
        keep = 2 if parts[0][-1].isdigit() and shortest > 1 else 1
        return [".".join(parts[0][-keep:])]
    prefix = 0
    while prefix < shortest - 1 and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix - 1 and len({p[-1 - suffix] for p in parts}) == 1:
        suffix += 1
    rests = [p[prefix: len(p) - suffix] for p in parts]
    if prefix > 0 and all(len(r) == 1 and r[0].isdigit() for r in rests):
        prefix -= 1  # "0", "1" say nothing: keep the shared part before them
        rests = [p[prefix: len(p) - suffix] for p in parts]
    return [".".join(r) for r in rests]
