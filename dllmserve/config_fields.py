"""A config dataclass field that says everything about its setting: default, help, range, and
(where they differ from the field's name) its command-line flag and environment variable.

`dllmserve.cli.config_args` generates the flags from these fields; `check_ranges` refuses an
out-of-range value naming the field, whoever built the config. Torch-free."""

from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any

from dllmserve.errors import ValidationError


def setting(
    default: Any,
    help: str,
    *,
    flag: str = "",
    env: str = "",
    lo: float | None = None,
    hi: float | None = None,
    cli: bool = True,
) -> Any:
    """A field with its setting's facts in its metadata. `flag` (e.g. "--worker-wait") names
    the flag when it is not the field's name; a flag "--no-X" on a bool that defaults to True
    turns it off. `cli=False`: no flag (set in code, or through a flag of its own)."""
    meta = {"help": help, "flag": flag, "env": env, "lo": lo, "hi": hi, "cli": cli}
    return field(default=default, metadata=meta)


def check_ranges(config: Any) -> None:
    """Every field with a range holds a value inside it (ValidationError naming the field)."""
    for f in fields(config):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        value = getattr(config, f.name)
        if lo is None and hi is None or not isinstance(value, (int, float)):
            continue
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValidationError(f.name, f"must be in {range_text(lo, hi)}, got {value}")


def range_text(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def default_of(f: Any) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()
