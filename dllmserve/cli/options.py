"""One rule for every flag of every subcommand: an environment variable sets its default, and
`--help` shows both.

`--max-queue` is `DLLMSERVE_MAX_QUEUE` unless the flag names another variable
(`add_argument(..., env="DLLMSERVE_WORKER_HTTP_PORT")`). A value from the environment is
checked as the flag's own value would be, and a bad one is an error naming the variable.
"""

from __future__ import annotations

import argparse
import os

PREFIX = "DLLMSERVE_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_NO_ENV = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def env_name(action: argparse.Action) -> str:
    return PREFIX + action.dest.upper()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; each flag's help ends with its default and its
    environment variable."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # BooleanOptionalAction adds its own "(default: ...)" (Python < 3.14): ours replaces it
        help = (action.help or "").removesuffix(" (default: %(default)s)")
        var = getattr(action, "env", None)
        if not var:
            return help
        default = action.default
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            shown = "on" if default else "off"
        elif default in (None, ""):
            shown = "none"
        else:
            shown = str(default).replace("%", "%%")
        return f"{help} (default: {shown}; env {var})".lstrip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose flags take their defaults from the environment."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, env: str | None = None, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and not isinstance(action, _NO_ENV):
            action.env = env or env_name(action)
        return action

    def parse_known_args(self, args=None, namespace=None):
        # Here, not in add_argument: only the chosen subcommand reads (and checks) its variables.
        for action in self._actions:
            raw = os.environ.get(getattr(action, "env", None) or "")
            if raw is not None:
                action.default = self._from_env(action, raw)
        return super().parse_known_args(args, namespace)

    def _from_env(self, action: argparse.Action, raw: str):
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if raw.strip().lower() not in TRUE + FALSE:
                self.error(f"${action.env}={raw!r}: must be one of {', '.join(TRUE + FALSE[1:])}")
            return raw.strip().lower() in TRUE
        try:
            value = action.type(raw) if action.type else raw
        except argparse.ArgumentTypeError as e:  # a type that names the flag and variable itself
            self.error(str(e))
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", "value")
            self.error(f"${action.env}={raw!r}: not a valid {name} for {action.option_strings[0]}")
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            self.error(f"${action.env}={raw!r}: {action.option_strings[0]} is one of {choices}")
        return value
