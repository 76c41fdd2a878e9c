"""Command-line flags generated from a config dataclass.

Each field `max_num_seqs` becomes `--max-num-seqs` (help, and a flag name or range where the
field gives one, from its metadata: dllmserve/config_fields.py) with the field's default; like
every flag of a `dllmserve.cli.options.Parser`, `$DLLMSERVE_MAX_NUM_SEQS` sets it when present:
flags, variables and defaults cannot drift from the dataclass. Bools get `--flag / --no-flag`
(a bool that defaults to on and names a flag of its own, like `--no-dispatch`, gets just that
flag, which turns it off); optional fields take `none` for None; a value out of the field's
range is an error naming the flag, its variable and the range.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, fields

from dllmserve.cli.options import FALSE, PREFIX, TRUE
from dllmserve.config_fields import default_of, range_text


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _flag_of(f: Field) -> str:
    return f.metadata.get("flag") or flag_name(f.name)


def _dest_of(f: Field) -> str:
    """The namespace attribute of a field's flag: its name, or the turning-off flag's own."""
    return _flag_of(f)[2:].replace("-", "_") if _turns_off(f) else f.name


def _turns_off(f: Field) -> bool:
    return f.default is True and bool(f.metadata.get("flag"))


def _base_type(hint: object) -> tuple[type, bool]:
    """(int, True) for `int | None`, (float, False) for `float`, ..."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (base,) = [a for a in args if a is not type(None)]
        return base, True
    return hint, False  # type: ignore[return-value]


def _ranged(base: type, source: str, lo: float | None, hi: float | None):
    """Text -> a number in [lo, hi]. Not a number: a ValueError, which argparse and the Parser
    report in their own words ("not a valid int"); out of range: an error naming `source`."""

    def parse(text: str):
        value = base(text)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{source}: must be in {range_text(lo, hi)}, got {text!r}"
            )
        return value

    parse.__name__ = base.__name__
    return parse


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
    """One flag per field of dataclass `cls` (except `skip` and fields marked cli=False), read
    from its variable too."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (each also from {PREFIX}<NAME>)")
    for f in fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = _flag_of(f)
        var = f.metadata.get("env") or PREFIX + flag[2:].replace("-", "_").upper()
        base, optional = _base_type(hints[f.name])
        text = f.metadata.get("help", "")
        if _turns_off(f):
            kind = {"action": "store_true", "default": False}
        elif base is bool:
            kind = {"action": argparse.BooleanOptionalAction, "default": default_of(f)}
        else:
            source = f"{flag} / {var}"
            if "lo" in f.metadata and base is not str:  # a service setting (config_fields)
                parse = _ranged(base, source, f.metadata["lo"], f.metadata["hi"])
            elif "lo" in f.metadata:
                parse = str
            else:
                parse = _parser_of(base, optional, source)
            kind = {"type": parse, "metavar": f.name.upper(), "default": default_of(f)}
        action = group.add_argument(flag, dest=_dest_of(f), help=text, **kind)
        action.env = var  # the Parser reads it, with `parse`, for the chosen subcommand


def config_from_args(cls: type, args: argparse.Namespace, **override):
    """The dataclass from parsed flags (fields not on the command line keep their defaults)."""
    values = {}
    for f in fields(cls):
        dest = _dest_of(f)
        if f.metadata.get("cli", True) and hasattr(args, dest):
            values[f.name] = not getattr(args, dest) if _turns_off(f) else getattr(args, dest)
    return cls(**{**values, **override})


def config_to_args(config: object, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that rebuild `config` in a child process (the fields that differ from the
    dataclass's defaults), for `dllmserve serve` starting its workers."""
    out: list[str] = []
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if f.name in skip or f.default is MISSING or value == f.default:
            continue
        if not f.metadata.get("cli", True):
            continue
        if _turns_off(f):
            out.append(_flag_of(f))
        elif isinstance(value, bool):
            out.append(_flag_of(f) if value else "--no-" + _flag_of(f)[2:])
        else:
            out += [_flag_of(f), "none" if value is None else str(value)]
    return out
