"""LightningCLI entry point: ``python cli.py fit --config configs/<name>.yaml``.

Besides LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``, four research
commands are dispatched before LightningCLI parses anything:

- ``python cli.py sweep --config base.yaml --sweep configs/sweeps/<x>.yaml`` runs a
  comparison / MEmeL-Tune sweep;
- ``python cli.py probe --ckpt_path run/checkpoints/x.ckpt`` probes a trained checkpoint's
  neurons (:mod:`memel_lightning.analysis`);
- ``python cli.py fkr_curve --ckpt_path CKPT`` writes the False Killing Rate against the
  inhibition ratio per layer (:mod:`memel_lightning.analysis.fkr_curve`);
- ``python cli.py export --ckpt_path CKPT --out DIR`` writes a causal LM as a Hugging Face
  folder (:mod:`memel_lightning.export`).

What this CLI adds to LightningCLI:

- **Config overlays**: a YAML file may start with ``extends: <file>`` (or a list of files),
  paths relative to it; ``--config overlay.yaml`` then stands for ``--config <base>
  --config overlay.yaml``, so an overlay holds only what it changes (lists such as
  ``trainer.callbacks`` are replaced by a later config unless written ``callbacks+:``).
- **One short way to set MEmeL options**: ``--memel.k 5``, ``--memel.delta 2`` (or a
  top-level ``memel:`` section in a YAML) set that option of the config's
  ``MEmeLCallback``, wherever it sits in ``trainer.callbacks``.
- **Bad settings stop the run with one line** naming the setting (exit code 2).
- Atomic checkpoint files, random states in checkpoints (exact mid-epoch resume), and the
  run's config saved with every checkpoint and never over another run's ``config.yaml``.
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import inspect
import logging
import re
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from .checkpoint_io import AtomicCheckpointIO
from .resume import RNGStateCheckpoint
from .run_record import RunConfigSaver

RESEARCH_HELP = (
    "Research commands (own options, see `<command> --help`): "
    "sweep (comparison and MEmeL-Tune sweeps: --config BASE --sweep SWEEP), "
    "probe (neuron probes on a checkpoint: --ckpt_path CKPT [--config CONFIG]), "
    "fkr_curve (FKR vs inhibition ratio per layer: --ckpt_path CKPT [--labels code_languages]), "
    "export (Hugging Face folder of a causal LM: --ckpt_path CKPT --out DIR)."
)
MEMEL_CALLBACK = "MEmeLCallback"
# The MEmeL settings when the core has no typed config (older core): name -> type.
_FALLBACK_SETTINGS: dict[str, Any] = {
    "selector": str, "k": int, "tau": float, "target_ratio": float, "strategy": str, "delta": float,
    "reg_lambda": float, "forget_steps": int, "late_start": int, "eps": float, "score_with": str,
    "reduce_dims": list[int], "active_in_eval": bool, "variable_shape": bool, "tau_report": float,
    "max_share": float, "nonfinite": str,
}


class ConfigError(ValueError):
    """A setting of the run is invalid; the message names it (printed as one line)."""


def root_message(err: BaseException) -> str:
    """The first line of the innermost cause: jsonargparse wraps a constructor's own
    message (``memel.k must be an integer >= 1, got 0``) in a long report of every type it tried.

    Example:
        >>> try:
        ...     try:
        ...         raise ValueError("memel.k must be >= 1")
        ...     except ValueError as e:
        ...         raise ValueError("Does not validate\\nGiven value: ...") from e
        ... except ValueError as outer:
        ...     root_message(outer)
        'memel.k must be >= 1'
    """
    inner = err
    while inner.__cause__ is not None or (inner.__context__ is not None and not inner.__suppress_context__):
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    lines = [line for line in str(inner).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(inner).__name__


def memel_settings() -> dict[str, Any]:
    """``{name: type}`` of the MEmeL settings (``MEmeLConfig``'s fields when the core has it)."""
    try:
        from .inhibition import MEmeLConfig  # type: ignore[attr-defined]
    except ImportError:
        return dict(_FALLBACK_SETTINGS)
    return {f.name: _plain_type(hint) for f in dataclasses.fields(MEmeLConfig)
            for hint in [typing.get_type_hints(MEmeLConfig).get(f.name, Any)]}


def callback_settings() -> dict[str, Any]:
    """``{name: type}`` of ``MEmeLCallback``'s own arguments other than ``memel`` (taps, cadence...)."""
    from .callback import MEmeLCallback

    hints = typing.get_type_hints(MEmeLCallback.__init__)
    names = [n for n in inspect.signature(MEmeLCallback.__init__).parameters if n not in ("self", "memel")]
    return {n: _plain_type(hints.get(n, Any)) for n in names}


def _plain_type(hint: Any) -> Any:
    """``Optional[X]`` -> ``X``; sequences of axes -> ``list[int]``; ``Union[str, Sequence[str]]`` kept."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        inner = typing.get_args(hint)
        return list[inner[0]] if inner and inner[0] is not Ellipsis else list
    return hint


# ---------------------------------------------------------------------- config overlays
def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def expand_configs(argv: Sequence[str], _seen: Optional[set[Path]] = None) -> list[str]:
    """Replace every ``--config OVERLAY`` whose YAML has ``extends:`` by its bases then itself.

    The overlay itself is passed as YAML text without the ``extends`` key (LightningCLI
    accepts config text for ``--config``).

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); open(os.path.join(d, "base.yaml"), "w").write("trainer: {max_epochs: 3}\\n") > 0
        True
        >>> open(os.path.join(d, "over.yaml"), "w").write("extends: base.yaml\\ntrainer: {max_steps: 2}\\n") > 0
        True
        >>> out = expand_configs(["fit", "--config", os.path.join(d, "over.yaml")])
        >>> out[2].endswith("base.yaml"), out[4]
        (True, '{trainer: {max_steps: 2}}\\n')
    """
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        out += _expand_one(value, set(_seen or ()))
    return out


def _is_file(value: str) -> bool:
    """Whether ``--config value`` names a file (jsonargparse also takes YAML text there, which
    may be longer than a path can be: ``Path.is_file`` raises on those instead of saying no)."""
    if "\n" in value or "{" in value:
        return False
    try:
        return Path(value).is_file()
    except OSError:  # e.g. ENAMETOOLONG
        return False


def _expand_one(value: str, seen: set[Path]) -> list[str]:
    path = Path(value)
    data = _load_yaml(path) if _is_file(value) else None
    if not isinstance(data, dict) or "extends" not in data:
        return ["--config", value]
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(f"config {value}: 'extends' loops back to itself")
    seen.add(resolved)
    bases = data.pop("extends")
    bases = [bases] if isinstance(bases, str) else list(bases or [])
    out: list[str] = []
    for base in bases:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"config {value}: extends {base!r}, but {base_path} does not exist")
        out += _expand_one(str(base_path), seen)
    if data:
        out += ["--config", yaml.safe_dump(data, default_flow_style=True, sort_keys=False)]
    return out


# ---------------------------------------------------------------------- --memel.<setting>
def _callback_entries(config: Any) -> list[Any]:
    callbacks = config.get("trainer", {}).get("callbacks") if hasattr(config, "get") else None
    if callbacks is None:
        return []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    return [c for c in callbacks if str(getattr(c, "class_path", "") or "").endswith(MEMEL_CALLBACK)]


def apply_memel_options(config: Any) -> None:
    """Move the values given as ``--memel.<setting>`` (or a top-level ``memel:`` section) into
    every ``MEmeLCallback`` entry of ``trainer.callbacks``; a clear error if there is none."""
    section = config.get("memel")
    if section is None:
        return
    given = {k: v for k, v in vars(section).items() if v is not None} if hasattr(section, "__dict__") else {
        k: v for k, v in dict(section).items() if v is not None}
    if not given:
        return
    entries = _callback_entries(config)
    if not entries:
        names = ", ".join(f"--memel.{k}" for k in given)
        raise ConfigError(
            f"{names}: this config has no {MEMEL_CALLBACK} in trainer.callbacks (it is a baseline); use a MEmeL "
            "config, e.g. configs/quickstart.yaml, or add --config configs/overlays/memel.yaml"
        )
    own = set(callback_settings())
    for entry in entries:
        init = entry.init_args
        for key in [k for k in given if k in own]:
            init[key] = given[key]
        settings = {k: v for k, v in given.items() if k not in own}
        if not settings:
            continue
        current = init.get("memel") if hasattr(init, "get") else None
        if current is None:
            init["memel"] = dict(settings)
        elif isinstance(current, dict):
            current.update(settings)
        else:  # a Namespace (typed MEmeLConfig)
            for key, value in settings.items():
                current[key] = value
    for key in given:
        section[key] = None  # recorded once, in the callback


# ---------------------------------------------------------------------- the CLI
class MEmeLCLI(LightningCLI):
    """LightningCLI in subclass mode for model and data.

    Models and data modules are named by ``class_path`` in the YAML (e.g.
    ``memel_lightning.models.DigitsClassifier``); the inhibition is a callback under
    ``trainer.callbacks`` (``memel_lightning.MEmeLCallback``). Checkpoints are written
    with :class:`~memel_lightning.checkpoint_io.AtomicCheckpointIO` unless the config
    names another ``CheckpointIO`` plugin, so a checkpoint on disk is never half-written.
    """

    def add_arguments_to_parser(self, parser: Any) -> None:
        for name, hint in memel_settings().items():
            parser.add_argument(
                f"--memel.{name}", type=Optional[hint], default=None,
                help=f"sets memel.{name} of the config's {MEMEL_CALLBACK} (docs/method.md)",
            )
        for name, hint in callback_settings().items():
            parser.add_argument(
                f"--memel.{name}", type=Optional[hint], default=None, help=f"sets {MEMEL_CALLBACK}'s {name}",
            )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then move ``--memel.*`` into the MEmeLCallback entry *before* ``--print_config``
        prints, so the printed config is the one that runs (and re-running it changes nothing)."""
        if isinstance(args, (dict, Namespace)):
            return super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        printing = [a for a in argv if a == "--print_config" or a.startswith("--print_config=")]
        self.config = parser.parse_args([a for a in argv if a not in printing])
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        apply_memel_options(config)
        if printing:
            flags = printing[-1].partition("=")[2]
            print(self._parser(subcommand).dump(config, skip_none="skip_null" in flags, skip_validation=True))
            raise SystemExit(0)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        apply_memel_options(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # a bad setting, found while building model, data or callbacks
            raise ConfigError(root_message(err)) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config["trainer"].get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["trainer"]["plugins"] = plugins + [AtomicCheckpointIO()]
        callbacks = config["trainer"].get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if not any(isinstance(c, RNGStateCheckpoint) for c in callbacks):
            config["trainer"]["callbacks"] = callbacks + [RNGStateCheckpoint()]
        return super().instantiate_trainer(**kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self.parser.epilog = RESEARCH_HELP


def _sweep(argv: Sequence[str]) -> Any:
    from .research.cli import sweep_main

    return sweep_main(argv, fit=main)


def _probe(argv: Sequence[str]) -> Any:
    from .analysis.cli import probe_main

    return probe_main(argv, cli_main=main)


def _fkr_curve(argv: Sequence[str]) -> Any:
    from .analysis.fkr_curve import fkr_curve_main

    return fkr_curve_main(argv, cli_main=main)


def _export(argv: Sequence[str]) -> Any:
    from .export import export_main

    return export_main(argv)


RESEARCH_COMMANDS: dict[str, Callable[[Sequence[str]], Any]] = {
    "sweep": _sweep, "probe": _probe, "fkr_curve": _fkr_curve, "export": _export,
}


class _DropTips(logging.Filter):
    """Lightning's advertisements for litlogger/litmodels, printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in str(record.msg)


def quiet_third_party_noise() -> None:
    """Silence messages every run would print that say nothing about the run."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
    # Lightning 2.6's own use of a torch API torch deprecated (not ours to fix).
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)`? is deprecated.*")


def _is_setting_error(err: BaseException) -> bool:
    names = {type(e).__name__ for e in (err, err.__cause__) if e is not None}
    return isinstance(err, ConfigError) or bool(names & {"MEmeLConfigError", "TapNotFoundError"})


def parser_message(err: argparse.ArgumentError) -> str:
    """One line from jsonargparse's multi-line report: the key, what it expected, what it got.

    Example:
        >>> err = argparse.ArgumentError(None, 'Parser key "memel.delta":\\n  Errors:\\n'
        ...     "    - Expected a <class 'float'>\\n    - Expected a <class 'NoneType'>\\n  Given value: nan")
        >>> parser_message(err)
        "memel.delta: expected float, got 'nan'"
    """
    text = str(err.message if hasattr(err, "message") else err)
    key = re.search(r'Parser key "([^"]+)"', text)
    given = re.search(r"Given value: (.*)", text)
    bullets = [b.strip() for b in re.findall(r"^\s*- (.*)$", text, flags=re.M)]
    useful = [b for b in bullets if "NoneType" not in b and not b.startswith(("Not a valid subclass", "a class path",
                                                                              "a dict"))]
    if key is None:
        return text.strip().splitlines()[0] if text.strip() else "invalid arguments"
    rest = text[key.end():].lstrip(":").strip().splitlines()
    reason = useful[0] if useful else (rest[0].strip() if rest else "invalid value")
    reason = re.sub(r"<class '(\w+)'>", r"\1", reason)
    reason = (reason[0].lower() + reason[1:]).replace("expected a ", "expected ")
    got = f", got {given.group(1).strip()!r}" if given else ""
    return f"{key.group(1)}: {reason}{got}"


def main(args: Optional[list[str]] = None, run: bool = True) -> Any:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in RESEARCH_COMMANDS:
        return RESEARCH_COMMANDS[argv[0]](argv[1:])
    quiet_third_party_noise()
    try:
        expanded = expand_configs(argv)
        if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
            sys.argv[1:] = expanded
        return MEmeLCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
            args=None if args is None else expanded,
            run=run,
        )
    except argparse.ArgumentError as err:
        if args is not None:
            raise
        print(f"error: {parser_message(err)} (see: cli.py {argv[0] if argv else ''} --help)", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, RuntimeError) as err:
        # From the command line a bad setting ends in one line, printed last; called from
        # Python (tests, sweeps) the exception propagates.
        if args is not None or not _is_setting_error(err):
            raise
        print(f"error: {root_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
