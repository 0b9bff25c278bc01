"""Typed configs: dataclass fields are the YAML recipe keys and the command-line flags.

A field is declared with :func:`opt` (default and help). ``add_arguments`` turns the fields into
flags (``lr`` → ``--lr``, ``loss_type`` → ``--loss-type``); ``build`` reads a YAML recipe, checks
every key and type, applies the flags given on the command line, and constructs the dataclass,
whose ``__post_init__`` rejects bad combinations.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from r1lite.errors import UsageError


def opt(default: Any, help: str, **kwargs) -> Any:
    """A config field with its help text (shown by ``--help`` and kept beside the code)."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base(tp) -> tuple[Any, bool]:
    """(underlying type, optional?) for ``X`` or ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _check(value: Any, tp, where: str) -> Any:
    """Return ``value`` if it fits ``tp`` (ints are accepted for floats), else raise UsageError."""
    base, optional = _base(tp)
    if value is None:
        if optional:
            return None
        raise UsageError(f"{where} must not be empty (null)")
    origin = typing.get_origin(base) or base
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
        list: lambda v: isinstance(v, list),
    }[origin](value)
    if not ok:
        name = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                dict: "a mapping", list: "a list"}[origin]
        raise UsageError(f"{where} must be {name}, got {value!r}")
    return float(value) if origin is float else value


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field. Defaults are suppressed, so only flags the user typed override a recipe."""
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        base, _ = _base(_hints(cls)[f.name])
        origin = typing.get_origin(base) or base
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{help_text} (default: {default!r})"
        if origin is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif origin is dict:
            parser.add_argument(flag, dest=f.name, action="append", metavar="KEY=VALUE",
                                default=argparse.SUPPRESS, help=help_text + "; repeat the flag for more keys")
        elif origin is list:
            parser.add_argument(flag, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=origin, default=argparse.SUPPRESS, help=help_text)


def parse_key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["digits=3", "ops=+-"]`` → ``{"digits": 3, "ops": "+-"}`` (values read as YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {pair}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def read_yaml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys at the top level")
    return data


def build(cls, recipe: dict[str, Any] | None = None, flags: dict[str, Any] | None = None, source: str = "config",
          presets=None):
    """Construct ``cls`` from recipe keys, then flags; unknown keys and wrong types are errors.

    ``presets(explicit) -> dict`` gives defaults that depend on the keys given (GRPO's
    ``algorithm``); keys given explicitly, in the recipe or as flags, win over them.
    """
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, value in (recipe or {}).items():
        if key not in names:
            raise UsageError(f"{source}: unknown key '{key}'; valid keys: {', '.join(sorted(names))}")
        values[key] = _check(value, hints[key], f"{source}: key '{key}'")
    for key, value in (flags or {}).items():
        base, _ = _base(hints[key])
        if (typing.get_origin(base) or base) is dict and isinstance(value, list):
            value = {**values.get(key, {}), **parse_key_values(value, "--" + key.replace("_", "-"))}
        values[key] = _check(value, hints[key], f"--{key.replace('_', '-')}")
    if presets is not None:
        values = {**presets(values), **values}
    return cls(**values)


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
