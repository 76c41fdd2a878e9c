"""Command-line flags generated from a config dataclass.

Each field `max_num_seqs` becomes `--max-num-seqs` (help from the field's metadata) with the
field's default; like every flag of a `dllmserve.cli.options.Parser`, `$DLLMSERVE_MAX_NUM_SEQS`
sets it when present: flags, variables and defaults cannot drift from the dataclass. Bools get
`--flag / --no-flag`; optional fields take `none` for None.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields

from dllmserve.cli.options import FALSE, PREFIX, TRUE


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(hint: object) -> tuple[type, bool]:
    """(int, True) for `int | None`, (float, False) for `float`, ..."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return hint, False  # type: ignore[return-value]


def _parser_of(base: type, optional: bool, source: str):
    """Text -> value; a bad text is an error naming `source` (the flag and its variable)."""

    def parse(text: str):
        if optional and text.lower() in ("", "none"):
            return None
        if base is bool and text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        try:
            if base is not bool:
                return base(text)
        except ValueError:
            pass
        want = sorted(TRUE + FALSE[1:]) if base is bool else base.__name__
        raise argparse.ArgumentTypeError(f"{source}: expected {want}, got {text!r}")

    return parse


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (except `skip`), read from its variable too."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (each also from {PREFIX}<NAME>)")
    for f in fields(cls):
        if f.name in skip:
            continue
        var = env_name(f.name)
        base, optional = _base_type(hints[f.name])
        parse = _parser_of(base, optional, f"{flag_name(f.name)} / {var}")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        text = f.metadata.get("help", "")
        if base is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        else:
            kind = {"type": parse, "metavar": f.name.upper()}
        action = group.add_argument(
            flag_name(f.name), dest=f.name, default=default, help=text, **kind
        )
        action.env = var  # the Parser reads it, with `parse`, for the chosen subcommand


def config_from_args(cls: type, args: argparse.Namespace, **override):
    """The dataclass from parsed flags (fields not on the command line keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **override})


def config_to_args(config: object, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that rebuild `config` in a child process (the fields that differ from the
    dataclass's defaults), for `dllmserve serve` starting its workers."""
    out: list[str] = []
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if f.name in skip or f.default is MISSING or value == f.default:
            continue
        if isinstance(value, bool):
            out.append(flag_name(f.name) if value else "--no-" + f.name.replace("_", "-"))
        else:
            out += [flag_name(f.name), "none" if value is None else str(value)]
    return out
