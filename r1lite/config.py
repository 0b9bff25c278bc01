"""Typed configs: dataclass fields are the YAML recipe keys and the command-line flags.

A field is declared with :func:`opt` (default and help). ``add_arguments`` turns the fields into
flags (``lr`` → ``--lr``, ``loss_type`` → ``--loss-type``); ``build`` reads a YAML recipe, checks
every key and type, applies the flags given on the command line, and constructs the dataclass,
whose ``__post_init__`` rejects bad combinations.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from r1lite.errors import UsageError


def opt(default: Any, help: str, *, key: str | None = None, old: tuple[str, ...] = (), **kwargs) -> Any:
    """A config field with its help text (shown by ``--help`` and kept beside the code).

    ``key``: the field's flat name (recipe key, flag) where it is not the slice's prefix + the
    field's name; ``old``: earlier flat names, still read for now with a one-line note."""
    metadata = {"help": help, "key": key, "old": tuple(old)}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def part(cls, prefix: str = "") -> Any:
    """A slice of a config: a dataclass whose fields are flat keys ``prefix + name`` of the whole
    (``part(ColdStart, "cold_start_")`` reads recipe key ``cold_start_lr`` into ``cold_start.lr``)."""
    return dataclasses.field(default_factory=cls, metadata={"prefix": prefix})


@dataclasses.dataclass(frozen=True)
class Key:
    """One flat key of a config: where its value lives (``path``), its type and its field."""

    name: str
    path: tuple[str, ...]
    type: Any
    field: dataclasses.Field
    old: tuple[str, ...] = ()
    """Earlier flat names (a slice's prefix applies to them as to the name, unless the field sets its own key)."""


def keys(cls, prefix: str = "", path: tuple[str, ...] = ()) -> dict[str, Key]:
    """Every flat key of ``cls``, slices flattened, in declaration order (a ``{name: Key}``)."""
    out: dict[str, Key] = {}
    fields = [f for f in dataclasses.fields(cls) if f.init]
    hints = _hints(cls)
    for f in fields:
        if "prefix" in f.metadata:  # a slice: its class is the field's default factory
            out.update(keys(f.default_factory, prefix + f.metadata["prefix"], path + (f.name,)))
            continue
        name = f.metadata.get("key") or prefix + f.name
        if name in out:
            raise TypeError(f"{cls.__name__}: two fields have the flat key '{name}'")
        old = tuple(o if f.metadata.get("key") else prefix + o for o in f.metadata.get("old", ()))
        out[name] = Key(name, path + (f.name,), hints[f.name], f, old)
    return out


def renamed(cls) -> dict[str, str]:
    """Earlier flat names of ``cls``'s keys → the names now."""
    return {old: k.name for k in keys(cls).values() for old in k.old}


def note_renamed(old: str, new: str, where: str) -> None:
    """The one line an old spelling prints (it still works for this release)."""
    print(f"note: {where} '{old}' is now '{new}'; the old name works for this release only", file=sys.stderr)


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
    if origin is float and isinstance(value, str):
        value = _number(value, where)  # YAML 1.1 reads 1e-3 (no dot) as a string
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
    if origin is float and not math.isfinite(value):
        raise UsageError(f"{where} must be a finite number, got {value!r}")
    return float(value) if origin is float else value


def _number(text: str, where: str) -> float | str:
    """A number written as text (``1e-3``), or the text unchanged when it is none.

    >>> _number("1e-3", "lr"), _number("fast", "lr")
    (0.001, 'fast')
    """
    try:
        return float(text)
    except ValueError:
        return text


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per flat key (slices flattened). Defaults are suppressed, so only flags the user
    typed override a recipe. An earlier spelling of a flag still works, hidden from ``--help``,
    with a one-line note (:func:`note_renamed`)."""
    for key in keys(cls).values():
        if key.name in skip:
            continue
        f = key.field
        base, _ = _base(key.type)
        origin = typing.get_origin(base) or base
        flag = "--" + key.name.replace("_", "-")
        olds = ["--" + o.replace("_", "-") for o in key.old]
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{help_text} (default: {default!r})"
        for names, shown in ([flag], help_text), *(([o], argparse.SUPPRESS) for o in olds):
            action = _Renamed if shown is argparse.SUPPRESS else None
            if origin is bool:
                parser.add_argument(*names, dest=key.name, action=_bool_action(action), default=argparse.SUPPRESS,
                                    help=shown)
            elif origin is dict:
                parser.add_argument(*names, dest=key.name, action=action or "append", metavar="KEY=VALUE",
                                    default=argparse.SUPPRESS,
                                    help=shown if action else shown + "; repeat the flag for more keys")
            elif origin is list:
                parser.add_argument(*names, dest=key.name, action=action, nargs="+", default=argparse.SUPPRESS, help=shown)
            else:
                parser.add_argument(*names, dest=key.name, action=action, type=origin, default=argparse.SUPPRESS,
                                    help=shown)


class _Renamed(argparse.Action):
    """An earlier spelling of a flag: stores like the flag now (appending for mappings), with the note."""

    def __call__(self, parser, namespace, values, option_string=None):
        note_renamed(option_string, "--" + self.dest.replace("_", "-"), "flag")
        if self.metavar == "KEY=VALUE":
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def _bool_action(renamed_action):
    if renamed_action is None:
        return argparse.BooleanOptionalAction

    class RenamedBool(argparse.BooleanOptionalAction):
        def __call__(self, parser, namespace, values, option_string=None):
            note_renamed(option_string, "--" + self.dest.replace("_", "-"), "flag")
            super().__call__(parser, namespace, values, option_string)
    return RenamedBool


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
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # files.decode_utf8's message (files is on this floor: not importable)
        line = raw[:e.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except RecursionError:
        raise UsageError(f"{path}: the YAML is nested too deeply to read; flatten it") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever the parser wrote
        raise UsageError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of config keys at the top level")
    return data


def build(cls, recipe: dict[str, Any] | None = None, flags: dict[str, Any] | None = None, source: str = "config",
          presets=None):
    """Construct ``cls`` from flat recipe keys, then flags; unknown keys and wrong types are errors.

    Slices (:func:`part`) are filled from their flat keys. ``presets(explicit) -> dict`` gives
    defaults that depend on the keys given (GRPO's ``algorithm``); keys given explicitly, in the
    recipe or as flags, win over them. An earlier name of a key still works, with a note.
    """
    known = keys(cls)
    old_names = renamed(cls)
    values: dict[str, Any] = {}
    for key, value in (recipe or {}).items():
        if key in old_names:
            note_renamed(key, old_names[key], f"{source}: key")
            key = old_names[key]
        if key not in known:
            raise UsageError(f"{source}: unknown key '{key}'; valid keys: {', '.join(sorted(known))}")
        values[key] = _check(value, known[key].type, f"{source}: key '{key}'")
    for key, value in (flags or {}).items():
        base, _ = _base(known[key].type)
        if (typing.get_origin(base) or base) is dict and isinstance(value, list):
            value = {**values.get(key, {}), **parse_key_values(value, "--" + key.replace("_", "-"))}
        values[key] = _check(value, known[key].type, f"--{key.replace('_', '-')}")
    if presets is not None:
        values = {**presets(values), **values}
    return _construct(cls, {known[k].path: v for k, v in values.items()})


def _construct(cls, values: dict[tuple[str, ...], Any]):
    """``cls`` from values by path, each slice built first (its ``__post_init__`` runs before the whole's)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if "prefix" in f.metadata:
            inner = {path[1:]: v for path, v in values.items() if path[0] == f.name}
            kwargs[f.name] = _construct(f.default_factory, inner)
        elif (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
    return cls(**kwargs)


def to_dict(config) -> dict[str, Any]:
    """The config as flat keys, the form of a recipe and of a run directory's ``config.yaml``."""
    out = {}
    for key in keys(type(config)).values():
        value = config
        for name in key.path:
            value = getattr(value, name)
        out[key.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def with_values(config, **changes):
    """A copy of ``config`` with some flat keys changed, checked again as a new config is."""
    return build(type(config), {**to_dict(config), **changes}, source="with_values")


def dump_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
