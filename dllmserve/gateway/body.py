"""Reading a request's JSON body: its size and time limits, and what JSON may hold here.

A body is read in full before anything else happens, so a slow sender is answered 408 once
`--body-timeout` passes rather than holding a connection. Python's JSON parser recurses, so a
body of arrays nested 100k deep raises RecursionError, and it accepts `"\\ud800"` (a lone
surrogate), which no UTF-8 encoder takes later (protobuf, the logs, the response): both are
refused here as a 400 naming the offending place, never a 500 from deep inside.
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request

from dllmserve.gateway.errors import ApiError, bad_field

MAX_DEPTH = 32  # an OpenAI body nests 4-5 levels (messages[i].content[j].text)


async def read_json(request: Request, max_bytes: int, timeout_s: float) -> object:
    """The parsed, checked body; 413 over `max_bytes`, 408 when it takes over `timeout_s`."""
    try:
        raw = await asyncio.wait_for(_read(request, max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408, f"body: not received within {timeout_s:g} s", param="body", type="timeout"
        ) from None
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise bad_field("body", f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_field("body", f"not valid JSON ({e})") from None
    check(body)
    return body


async def _read(request: Request, limit: int) -> bytes:
    size = 0
    chunks = []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"body: must be at most {limit} bytes", param="body")
        chunks.append(part)
    return b"".join(chunks)


def check(body: object) -> None:
    """Refuse nesting over MAX_DEPTH and strings that are not valid Unicode (walked without
    recursion, so the check itself cannot overflow)."""
    todo: list[tuple[object, str, int]] = [(body, "", 0)]
    while todo:
        value, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise bad_field("body", f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            _check_text(value, path or "body")
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, f"{path} key" if path else "body key")
                todo.append((v, f"{path}.{k}" if path else k, depth + 1))
        elif isinstance(value, list):
            todo.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_field(
            path,
            f"not valid Unicode (a lone surrogate at character {e.start})",
        ) from None
