"""A worker's membership of the service: its id, and how it leaves without losing a request.

- SIGTERM drains it (`drain`): it says "draining" (ASSIGN refuses it from then on), unread
  batches go back to the queue untouched, the loop finishes what runs (bounded by
  `drain_timeout_s`; what is left goes back as a new attempt), and once the heartbeat has
  stopped the inbox is read once more before it deregisters.
- The watchdog takes it out when an iteration stalls (`withdraw`); if the step ever returns,
  it serves again under a fresh id (`rejoin`), never confused with the old one's inbox.

It holds no request state of the loop: the loop passes in what the drain needs (a call that
finishes the running requests and returns those left, and one that stops the heartbeat). The
id is written only on the loop's thread (`rejoin`); the other threads read the current value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import redis
import redis.exceptions

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.scripts import HANDED_BACK, Broker
from dllmserve.broker.workers import DRAINING, set_state
from dllmserve.worker.inbox import read_entries

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, client: redis.Redis, worker_id: str, drain_timeout_s: float) -> None:
        self.r = client
        self.broker = Broker(client)
        self.id = worker_id
        self.drain_timeout_s = drain_timeout_s
        self._base_id, self._rejoins = worker_id, 0

    def ensure_group(self) -> None:
        """The consumer group of this id's inbox (created with the stream if need be)."""
        try:
            self.r.xgroup_create(rk.inbox_key(self.id), rk.INBOX_GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def withdraw(self, ran_s: float, limit_s: float) -> None:
        """(Watchdog thread.) An iteration stalled: delete the registration, so the dispatcher
        reaps us at once and re-runs our requests with attempt + 1 (the heartbeat is silent
        while the watchdog is tripped)."""
        log.error(
            "worker %s stalled: an iteration has run %.1f s (limit %.1f s); leaving",
            self.id,
            ran_s,
            limit_s,
        )
        self.r.delete(rk.worker_key(self.id))

    def rejoin(self) -> str:
        """The stalled step came back and the loop dropped its work: take a fresh id (the
        dispatcher reaps the old one's inbox) and return it."""
        self._rejoins += 1
        self.id = f"{self._base_id}.{self._rejoins}"
        self.ensure_group()
        log.warning("worker rejoins as %s", self.id)
        return self.id

    def drain(
        self, finish: Callable[[float], Iterable[str]], before_leave: Callable[[], None]
    ) -> None:
        """Leave without losing a request. `finish(deadline)` runs the loop's requests until
        they end or `deadline` (time.monotonic()) and returns the ids of those left, aborted;
        `before_leave` stops the heartbeat. The hash says "draining" first, so the last inbox
        read (heartbeat stopped) sees every batch we were ever given."""
        log.info("worker %s draining", self.id)
        set_state(self.r, self.id, DRAINING)
        self.hand_back_unread()
        for rid in finish(time.monotonic() + self.drain_timeout_s):
            self.hand_back(rid)  # out of time: another worker runs it again
        before_leave()
        set_state(self.r, self.id, DRAINING)  # over a beat sent meanwhile
        self.hand_back_unread()
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(rk.worker_key(self.id), rk.inbox_key(self.id), rk.load_key(self.id))
        pipe.delete(rk.ctl_key(self.id))
        pipe.srem(rk.WORKERS, self.id)
        pipe.execute()

    def hand_back_unread(self) -> None:
        """Every batch of the inbox not read yet goes back to the queue untouched."""
        while entries := read_entries(self.r, self.id, count=64):
            for entry in entries:
                for rid in entry.request_ids:
                    self.hand_back(rid)
                self.r.xack(rk.inbox_key(self.id), rk.INBOX_GROUP, entry.entry_id)

    def hand_back(self, rid: str) -> None:
        """A request we hold goes back to the queue, its attempt not charged."""
        self.broker.reclaim(rid, worker=self.id, max_attempts=0, charge=HANDED_BACK)
        self.r.decr(rk.load_key(self.id))
