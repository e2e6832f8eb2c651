"""The config of one sweep run: the base config edited by dotted keys.

Example:
    >>> config = {"trainer": {"callbacks": [{"class_path": "x.MEmeLCallback"}]}}
    >>> set_dotted(config, "trainer.callbacks.0.init_args.taps", "default")
    >>> config["trainer"]["callbacks"][0]["init_args"]
    {'taps': 'default'}
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from .spec import Cell, SweepConfigError, Variant

CALLBACK_NAME = "MEmeLCallback"
DEFAULT_CALLBACK_PATH = "memel_lightning.MEmeLCallback"


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``config["a"]["b"][0]["c"] = value`` for ``key="a.b.0.c"`` (creating mappings)."""
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise SweepConfigError(
                    f"override {key!r}: {'.'.join(parts[:i]) or 'config'} is a list of {len(node)} items, "
                    f"{part!r} is not an index of it"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise SweepConfigError(f"override {key!r}: {'.'.join(parts[:i])} is {node!r}, not a mapping or list")


def is_memel_callback(entry: Any) -> bool:
    return isinstance(entry, dict) and str(entry.get("class_path", "")).endswith(CALLBACK_NAME)


# Top-level keys LightningCLI's ``fit`` itself reads; anything else (``extends``, a ``memel``
# shortcut) is the project CLI's own syntax and needs that CLI to resolve the file.
LIGHTNING_KEYS = {"seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path", "weights_only"}


def needs_resolution(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` uses syntax only the CLI understands: other files to stack
    (``extends``), keys outside LightningCLI's, or list appends (``callbacks+``)."""
    if set(config) - LIGHTNING_KEYS:
        return True

    def appends(node: Any) -> bool:
        if isinstance(node, Mapping):
            return any(str(k).endswith("+") or appends(v) for k, v in node.items())
        if isinstance(node, list):
            return any(appends(v) for v in node)
        return False

    return appends(config)


def load_base_config(
    path: str | Path, sweep_path: Optional[str] = None, resolve: Optional[Callable[[str], dict]] = None
) -> dict:
    """The YAML mapping in ``path``; a clear error when it is missing or not a mapping.

    A config in the CLI's own syntax (:func:`needs_resolution`: an overlay that ``extends``
    other files, ...) is replaced by ``resolve(path)``, the CLI's fully resolved config,
    so a variant's edits see every callback wherever the overlays put it.
    """
    path = Path(path)
    if not path.is_file():
        where = f" (named by sweep file {sweep_path})" if sweep_path else ""
        raise SweepConfigError(
            f"base config {path} does not exist{where}; the sweep needs the domain's config file "
            "(is that domain installed on this branch?) or pass another one with --config"
        )
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise SweepConfigError(f"base config {path}: expected a mapping at the top level")
    if needs_resolution(config):
        if resolve is None:
            raise SweepConfigError(f"base config {path} uses the CLI's own syntax ({sorted(set(config) - LIGHTNING_KEYS)}); "
                                   "it needs the CLI to resolve it")
        config = resolve(str(path))
        if not isinstance(config, dict) or "trainer" not in config:
            raise SweepConfigError(f"base config {path}: the CLI did not resolve it to a config with a trainer")
    return config


def variant_config(
    base: dict, variant: Variant, seed: int, run_dir: Path, overrides: Mapping[str, Any], cell: Cell = Cell()
) -> dict:
    """The config of one run: ``base`` changed by the variant, the sweep's overrides and the cell.

    Order (later wins): the variant's callback edits, seed and logger, the sweep's
    ``overrides``, the grid cell's overrides, the variant's own ``overrides``.
    """
    config = copy.deepcopy(base)
    trainer = config.setdefault("trainer", {}) or {}
    config["trainer"] = trainer
    callbacks = trainer.get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    if not variant.callback:
        callbacks = [c for c in callbacks if not is_memel_callback(c)]
    else:
        mine = [c for c in callbacks if is_memel_callback(c)]
        if not mine and (variant.memel or variant.callback_args):
            entry = {"class_path": DEFAULT_CALLBACK_PATH, "init_args": {"taps": "default", "memel": {}}}
            callbacks.append(entry)
            mine = [entry]
        for entry in mine:
            init = entry.setdefault("init_args", {}) or {}
            entry["init_args"] = init
            init.update(copy.deepcopy(variant.callback_args))
            init["memel"] = {**(init.get("memel") or {}), **variant.memel}
    trainer["callbacks"] = callbacks
    config["seed_everything"] = int(seed)
    trainer["default_root_dir"] = str(run_dir)
    # Every run logs to its own folder with TensorBoard: the run summary reads the events back.
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
    }
    for key, value in [*overrides.items(), *cell.overrides, *variant.overrides.items()]:
        set_dotted(config, key, copy.deepcopy(value))
    return config
