"""The heartbeat: a thread that advertises the worker's capacity while the loop computes.

It runs beside the engine loop so that a long step never makes a live worker look dead. It
also notices when the dispatcher has reaped the worker (it missed heartbeats, e.g. a frozen
process) and tells the loop to drop the work that was taken back. While the watchdog holds the
loop for stalled it stays silent, so the worker drops out of the service. Each beat also
carries the engine's `ModelLimits` (dllmserve/broker/workers.py): the scheduler checks a
request against the model before it queues it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import redis
import redis.exceptions

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.redis_link import Backoff
from dllmserve.broker.workers import DRAINING, READY, WorkerRecord, encode_limits

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, loop, client: redis.Redis, device: str, slots: int) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.loop = loop
        self.r = client
        self.device = device
        self.slots = slots
        limits = loop.engine.limits
        self.limits = encode_limits(limits) if limits is not None else ""
        self.halt = threading.Event()
        self._registered_as = ""  # the worker id of the last beat (the loop's id may change)

    @property
    def registered(self) -> bool:
        """The last beat registered the loop's current id (readiness)."""
        return self._registered_as == self.loop.id

    def beat(self) -> None:
        lp = self.loop
        st = lp.snapshot
        if self._registered_as == lp.id and not self.r.sismember(rk.WORKERS, lp.id):
            lp.reaped.set()
        record = WorkerRecord(
            model=lp.model_name,
            device=self.device,
            host=socket.gethostname(),
            slots=self.slots,
            state=DRAINING if lp.stop.is_set() else READY,
            running=st.get("running", 0),
            waiting=st.get("waiting", 0),
            free_pages=st.get("free_pages", 0),
            total_pages=st.get("total_pages", 0),
            max_num_seqs=st.get("max_num_seqs", 0),
            steps=lp.steps,
            limits=self.limits,
            t=time.time(),
        )
        pipe = self.r.pipeline(transaction=False)
        record.write(pipe, lp.id, int(lp.cfg.heartbeat_ttl_s * 1000))
        pipe.execute()
        self._registered_as = lp.id

    def run(self) -> None:
        backoff = Backoff(log, "heartbeat")  # beats go on; the warnings thin out
        while not self.halt.wait(self.loop.cfg.heartbeat_interval_s):
            if self.loop.watchdog.tripped.is_set():
                continue
            try:
                self.beat()
                backoff.ok()
            except redis.exceptions.RedisError as e:
                backoff.failed(e)
