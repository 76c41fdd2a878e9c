"""How a worker leaves the service without losing a request, and how it comes back.

- SIGTERM drains it: unread batches go back to the queue, running requests finish (or, past
  `drain_timeout_s`, go back as a new attempt), and only then does it deregister.
- The watchdog takes it out when an iteration stalls; if the step ever returns, it drops the
  requests taken back meanwhile and serves again under a fresh id.
- The dispatcher reaped it (missed heartbeats): it drops the work taken back.

A mixin of `WorkerLoop`, whose engine, Redis client, active requests and publisher it uses.
"""

from __future__ import annotations

import logging
import time

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.scripts import HANDED_BACK
from dllmserve.broker.workers import DRAINING, set_state

log = logging.getLogger(__name__)


class Leaving:
    def _forget_all(self, why: str = "was reaped") -> None:
        """The dispatcher took our work back (we missed heartbeats): drop it locally."""
        log.warning("worker %s %s; dropping %d requests", self.id, why, len(self.active))
        self.pub.flush()
        for rid in list(self.active):
            self.engine.abort(rid)
        self.active.clear()
        with self._lock:
            self.batches.clear()

    def _leave_stalled(self, ran_s: float, limit_s: float) -> None:
        """(Watchdog thread.) Heartbeat stopped, key deleted: the dispatcher reaps us at once and
        re-runs our requests with attempt + 1 (dead-letters one that failed too many times)."""
        log.error(
            "worker %s stalled: an iteration has run %.1f s (limit %.1f s); leaving",
            self.id,
            ran_s,
            limit_s,
        )
        self.r.delete(rk.worker_key(self.id))

    def _rejoin(self) -> None:
        """The stalled step came back; its requests are other attempts' now. Serve again under
        a fresh id, never confused with the old one's inbox, which the dispatcher reaps."""
        self._forget_all("stalled")
        self._rejoins += 1
        self.id, self._ctl_last = f"{self._base_id}.{self._rejoins}", "0-0"
        self.ensure_group()
        self.watchdog.reset()
        log.warning("worker rejoins as %s", self.id)

    def drain(self) -> None:
        """Stop taking work, hand back unread batches, finish what runs (bounded, then hand it
        back), then leave. The hash says "draining" first, so ASSIGN refuses us from then on and
        the last inbox read (heartbeat stopped) sees every batch we were ever given."""
        log.info("worker %s draining", self.id)
        self.snapshot = {**self.snapshot, "state": "draining"}
        set_state(self.r, self.id, DRAINING)
        self._hand_back_unread()
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while self.engine.has_unfinished() and time.monotonic() < deadline:
            self._read_ctl()
            self._check_deadlines()
            updates = self._step()
            if self.watchdog.tripped.is_set():
                break  # the dispatcher takes these back
            self._publish(updates)
        self.pub.flush()
        for rid in list(self.active):  # out of time: another worker runs them again
            self.engine.abort(rid)
            self._handback(rid)
        self.active.clear()
        self.pub.close()
        if self.before_leave is not None:
            self.before_leave()
        set_state(self.r, self.id, DRAINING)  # over a beat sent meanwhile
        self._hand_back_unread()
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(rk.worker_key(self.id), rk.inbox_key(self.id), rk.load_key(self.id))
        pipe.delete(rk.ctl_key(self.id))
        pipe.srem(rk.WORKERS, self.id)
        pipe.execute()

    def _hand_back_unread(self) -> None:
        """Every batch of the inbox not read yet goes back to the queue untouched."""
        while True:
            reply = self.r.xreadgroup(
                rk.INBOX_GROUP, self.id, {rk.inbox_key(self.id): ">"}, count=64
            )
            if not reply or not reply[0][1]:
                return
            for entry_id, fields in reply[0][1]:
                for rid in [x for x in rk.text(fields.get(b"ids")).split(",") if x]:
                    self._handback(rid)
                self.r.xack(rk.inbox_key(self.id), rk.INBOX_GROUP, entry_id)

    def _handback(self, rid: str) -> None:
        self.broker.reclaim(rid, worker=self.id, max_attempts=0, charge=HANDED_BACK)
        self.r.decr(rk.load_key(self.id))
