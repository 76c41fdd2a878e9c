"""Redis stream entry ids (`<ms>-<seq>`) as comparable values."""

from __future__ import annotations

from dllmserve.broker import redis_keys as rk


def stream_id(entry_id: bytes | str) -> tuple[int, int]:
    """`(ms, seq)` of an entry id, ordered as Redis orders the entries (a bare `<ms>` is
    `<ms>-0`); string order would put `10-0` before `9-0`."""
    ms, _, seq = rk.text(entry_id).partition("-")
    return int(ms), int(seq or 0)
