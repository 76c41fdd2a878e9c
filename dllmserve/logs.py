"""Process logging: plain text or one JSON object per line, and request lifecycle events.

Every process (scheduler, worker, gateway) logs through the standard `logging` module; this
module only chooses the line format (`--log-format text|json`) and gives lifecycle events one
shape. An event is a log record whose message is the event name and whose `extra` fields
(request id, worker, attempt, timings) become keys of the JSON object, or `key=value` pairs
after the message in text mode, so `grep request_id=abc` and `jq 'select(.request_id=="abc")'`
both follow one request through scheduler and worker logs.

`emit` prints the lines a process owes its operator or a supervising tool whatever the log level
(a `DLLMSERVE_*_READY` marker, `dllmserve serve`'s status lines) in the same format, so that in
json mode every line a process writes is one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

FORMATS = ("text", "json")
EVENT_ATTR = "dllm_fields"  # the LogRecord attribute holding an event's fields
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_format = {"name": "text"}  # the process's format, set by configure()


def _json_head(created: float, level: str, logger: str, message: str) -> dict:
    return {
        "ts": round(created, 6),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created * 1000) % 1000:03d}Z",
        "level": level,
        "logger": logger,
        "message": message,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = _json_head(record.created, record.levelname, record.name, record.getMessage())
        out.update(getattr(record, EVENT_ATTR, {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with an event's fields appended as key=value pairs."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, EVENT_ATTR, None)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return f"{head} {pairs}{sep}{tail}"


def _text_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    s = str(v)
    return json.dumps(s) if (not s or " " in s or '"' in s) else s


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Set up the root logger of a process (called once by the CLI)."""
    if fmt not in FORMATS:
        raise ValueError(f"--log-format: must be one of {list(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    _format["name"] = fmt


def emit(
    message: str,
    stream: TextIO | None = None,
    logger: str = "dllmserve",
    level: str = "INFO",
    **fields: object,
) -> None:
    """Print one line whatever the log level, in the process's format: `message k=v ...` in text
    mode, a JSON object (the message, then the fields) in json mode."""
    if _format["name"] == "json":
        line = json.dumps(
            {**_json_head(time.time(), level, logger, message), **fields}, default=str
        )
    else:
        line = " ".join([message, *(f"{k}={_text_value(v)}" for k, v in fields.items())])
    print(line, file=stream or sys.stdout, flush=True)


def ready(marker: str, **fields: object) -> None:
    """A process's ready marker (`DLLMSERVE_WORKER_READY id=... model=...`), which supervisors
    and tests wait for; in json mode the event `ready` with the marker as a field."""
    if _format["name"] == "json":
        emit(marker, event="ready", marker=marker, **fields)
    else:
        emit(marker, **fields)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one lifecycle event (`accepted`, `dispatched`, `admitted`, `first_step`,
    `finished`, ...) with its fields; fields whose value is None are left out."""
    if logger.isEnabledFor(level):
        kept = {"event": name, **{k: v for k, v in fields.items() if v is not None}}
        logger.log(level, name, extra={EVENT_ATTR: kept})
