"""The worker's inbox (`dllm:inbox:{id}`): the batches the dispatcher handed it.

An entry is acknowledged and deleted once every request of it has its terminal record, so what
is left in a dead worker's inbox is exactly the work the dispatcher must take back. Which
requests of an entry are still open is kept by `OpenEntries`, which only the publisher's jobs
touch: they run one at a time in submission order (a request's terminal record before its
entry's acknowledgement), so it needs no lock.
"""

from __future__ import annotations

import redis

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.inbox_entry import InboxEntry, decode_all


def read_entries(
    client: redis.Redis, worker_id: str, *, count: int, block_ms: int | None = None
) -> list[InboxEntry]:
    """The next unread entries of the worker's inbox."""
    key = rk.inbox_key(worker_id)
    reply = client.xreadgroup(rk.INBOX_GROUP, worker_id, {key: ">"}, count=count, block=block_ms)
    return [entry for _key, entries in reply or [] for entry in decode_all(entries)]


class OpenEntries:
    """The entries read and not yet acknowledged, each with its requests not ended yet."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._open: dict[str, tuple[str, set[str]]] = {}  # entry -> (the inbox's worker, ids)

    def opened(self, worker_id: str, entry_id: str, request_ids: list[str]) -> None:
        """`worker_id` read the entry and took these of its requests (acknowledged at once
        when it took none: they were cancelled meanwhile, or are no longer its)."""
        self._open[entry_id] = (worker_id, set(request_ids))
        if not request_ids:
            self._ack(entry_id)

    def ended(self, entry_id: str, request_id: str) -> None:
        """A request's terminal record is written; its entry is acknowledged with the last."""
        entry = self._open.get(entry_id)
        if entry is None:
            return  # taken back meanwhile (cleared)
        entry[1].discard(request_id)
        if not entry[1]:
            self._ack(entry_id)

    def clear(self) -> None:
        """The dispatcher took the work back: nothing of ours is left to acknowledge."""
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)

    def _ack(self, entry_id: str) -> None:
        worker_id, _left = self._open.pop(entry_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(rk.inbox_key(worker_id), rk.INBOX_GROUP, entry_id)
        pipe.xdel(rk.inbox_key(worker_id), entry_id)
        pipe.execute()
