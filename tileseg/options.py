"""Command-line options generated from a job's frozen options dataclass: one declaration per option.

Each field says its default and help once (`option(...)`); `add_options` makes the argparse options
(flag, type, default and help text) from them and `from_args` builds the dataclass back, so the CLI,
the Ray job entrypoints and the Python API cannot disagree about an option.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from tileseg.errors import OptionError

_NO_DEFAULT = dataclasses.MISSING


def option(
    default: Any = _NO_DEFAULT,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    positional: bool = False,
    cli: bool = True,
    many: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option.

    `flag` defaults to `--field-name`; `parse` turns the option's text into the field's value (for
    tuples such as `--bands 3,2,1`); `positional` makes it the command's positional arguments (a tuple
    field takes one or more); `cli=False` keeps a field out of the command line (Python API only);
    `many` makes a tuple option take one or more space-separated values (`--classes background building`),
    each converted by `parse` (default: str).
    """
    meta = dict(
        help=help, flag=flag, metavar=metavar, choices=choices, parse=parse, positional=positional, cli=cli, many=many
    )
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple or None for a mutable default")
    if default is _NO_DEFAULT:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed) of a field's annotation."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of `cls` that are command-line options, with their resolved type hints."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    if f.default is _NO_DEFAULT or f.default is None or isinstance(f.default, bool) or "default" in text:
        return text
    sep = " " if f.metadata.get("many") or (isinstance(f.default, tuple) and not f.metadata["parse"]) else ","
    shown = sep.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    return f"{text} (default {shown})"


def _many(f: dataclasses.Field, base: Any) -> bool:
    """Whether an option takes space-separated values: asked for (`many`), or a tuple field with no parser."""
    return bool(f.metadata.get("many")) or (typing.get_origin(base) is tuple and not f.metadata["parse"])


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argparse option (or the positionals) per CLI field of the options dataclass `cls`."""
    for f, hint in cli_fields(cls):
        base, _ = _base_type(hint)
        kw: dict[str, Any] = {"help": _help(f)}
        if f.metadata["metavar"]:
            kw["metavar"] = f.metadata["metavar"]
        if f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        if f.metadata["positional"]:
            kw["nargs"] = "+" if typing.get_origin(base) is tuple else None
            parser.add_argument(f.name, **kw)
            continue
        if base is bool:  # the flag turns the default over: --probabilities sets True, --quiet sets False
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            many = _many(f, base)
            item = typing.get_args(base)[0] if many and typing.get_origin(base) is tuple else base
            kw["type"] = f.metadata["parse"] or (item if item in (int, float, str) else str)
            if many:
                kw["nargs"] = "+"
            if f.default is _NO_DEFAULT:
                kw["required"] = True
            else:
                kw["default"] = f.default
        parser.add_argument(flag_of(f), dest=f.name, **kw)


def from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The options dataclass `cls` from parsed arguments (fields not on the command line from `extra`)."""
    values = {f.name: getattr(args, f.name) for f, _ in cli_fields(cls)}
    for f, hint in cli_fields(cls):
        base, _ = _base_type(hint)
        if typing.get_origin(base) is tuple and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values, **extra)


def int_list(text: str) -> tuple[int, ...]:
    """'3,2,1' -> (3, 2, 1), for options such as --bands."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def check(condition: bool, option_flag: str, text: str) -> None:
    """Raise OptionError naming the option when `condition` is false."""
    if not condition:
        raise OptionError(f"{option_flag}: {text}")


@dataclasses.dataclass(frozen=True)
class Command:
    """A `tileseg` subcommand: its options dataclass and the function that runs them (exit status)."""

    name: str
    help: str
    options: type
    run: Callable[[Any], int]
    description: str = ""
