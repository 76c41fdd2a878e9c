"""Command-line flags and DLLMSERVE_* environment variables generated from a config dataclass.

Each field `max_num_seqs` becomes `--max-num-seqs` (help from the field's metadata), whose
default is `$DLLMSERVE_MAX_NUM_SEQS` when set, else the field's own: flags, variables and
defaults cannot drift from the dataclass. Bools get `--flag / --no-flag`; optional fields take
`none` for None.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import MISSING, fields

ENV_PREFIX = "DLLMSERVE_"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


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
        if base is bool and text.lower() in TRUE | FALSE:
            return text.lower() in TRUE
        try:
            if base is not bool:
                return base(text)
        except ValueError:
            pass
        want = sorted(TRUE | FALSE) if base is bool else base.__name__
        raise argparse.ArgumentTypeError(f"{source}: expected {want}, got {text!r}")

    return parse


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (except `skip`), defaulting to its variable."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (each also from {ENV_PREFIX}<NAME>)")
    for f in fields(cls):
        if f.name in skip:
            continue
        var = env_name(f.name)
        base, optional = _base_type(hints[f.name])
        parse = _parser_of(base, optional, f"{flag_name(f.name)} / {var}")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        text = f"{f.metadata.get('help', '')} [{var}; default {default}]"
        env = os.environ.get(var)
        if base is bool:
            if env is not None:
                try:
                    default = parse(env)
                except argparse.ArgumentTypeError as e:
                    parser.error(str(e))
            group.add_argument(flag_name(f.name), dest=f.name, default=default, help=text,
                               action=argparse.BooleanOptionalAction)  # fmt: skip
        else:  # argparse parses a string default (the variable's text) with `type`, or fails
            default = env if env is not None else default
            group.add_argument(flag_name(f.name), dest=f.name, default=default, help=text,
                               type=parse, metavar=f.name.upper())  # fmt: skip


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
