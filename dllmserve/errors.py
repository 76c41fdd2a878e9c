"""Errors a caller can act on: each names the offending field and what would be valid."""

from __future__ import annotations

ECHO_CHARS = 40


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` cut to `limit` characters: a message that quotes what a client sent stays
    short whatever it sent (a gRPC status travels in metadata, which has a size limit)."""
    text = repr(value[: limit + 1] if isinstance(value, (str, bytes)) else value)
    return text if len(text) <= limit else f"{text[:limit]}... (cut)"


class ValidationError(ValueError):
    """A request parameter is out of range; `field` names it (e.g. ``sampling_params.steps``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class CapacityError(RuntimeError):
    """A request can never fit this engine (cache pages or tokens per iteration), however long
    it waits."""


class ListenError(OSError):
    """A server cannot listen where a flag asked it to (the message names the flag)."""


class UnsupportedModelError(ValueError):
    """A checkpoint needs an architecture or option this project does not implement."""


class CheckpointError(ValueError):
    """A checkpoint's files are missing, malformed, or hold tensors of the wrong name or shape."""
