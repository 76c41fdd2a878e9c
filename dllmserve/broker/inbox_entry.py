"""An entry of a worker's inbox (`dllm:inbox:{id}`): one batch the dispatcher handed it.

ASSIGN (`lua.py`) writes it inside Redis with the field and separator named here; the worker
reads it (`worker/inbox.py`) and the reclaimer reads what a dead worker left (`scheduler/
reclaim.py`), both through `InboxEntry.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dllmserve.broker import redis_keys as rk

IDS_FIELD = "ids"  # the batch's request ids, joined by SEPARATOR
SEPARATOR = ","  # never in a request id (scheduler/validation.py's REQUEST_ID_RE)


@dataclass(frozen=True)
class InboxEntry:
    """One batch: its stream entry id and the ids of its requests, in dispatch order."""

    entry_id: str
    request_ids: tuple[str, ...]

    def fields(self) -> dict[str, str]:
        """The entry's stream fields (what ASSIGN writes)."""
        for rid in self.request_ids:
            if not rid or SEPARATOR in rid:
                raise ValueError(
                    f"request id {rid!r} in an inbox entry: empty or holds {SEPARATOR!r}"
                )
        return {IDS_FIELD: SEPARATOR.join(self.request_ids)}

    @classmethod
    def decode(cls, entry_id: bytes | str, fields: dict[bytes, Any]) -> InboxEntry:
        """An entry as XRANGE / XREADGROUP return it (an entry without ids holds none)."""
        ids = rk.text(fields.get(IDS_FIELD.encode())).split(SEPARATOR)
        return cls(rk.text(entry_id), tuple(rid for rid in ids if rid))


def read_all(client: Any, worker_id: str) -> Any:
    """Every entry of the inbox, read or not (await it on an asyncio client); `decode_all`."""
    return client.xrange(rk.inbox_key(worker_id), "-", "+")


def decode_all(reply: list) -> list[InboxEntry]:
    """The entries of an XRANGE reply."""
    return [InboxEntry.decode(entry_id, fields) for entry_id, fields in reply or []]
