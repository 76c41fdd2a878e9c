"""The heartbeat: a thread that advertises the worker's capacity while the loop computes.

It runs beside the engine loop so that a long step never makes a live worker look dead. It
also notices when the dispatcher has reaped the worker (it missed heartbeats, e.g. a frozen
process) and tells the loop to drop the work that was taken back. While the watchdog holds the
loop for stalled it stays silent, so the worker drops out of the service. Each beat also
carries the engine's `ModelLimits` (dllmserve/broker/workers.py): the scheduler checks a
request against the model before it queues it.

It reads the loop only through what it is given: the loop's last `Snapshot` (its id, steps and
engine stats) and three events, `draining` (SIGTERM), `paused` (the watchdog tripped) and
`reaped`, which it sets and the loop clears.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable

import redis
import redis.exceptions

from dllmserve.broker import redis_keys as rk
from dllmserve.broker.redis_link import Backoff
from dllmserve.broker.workers import DRAINING, READY, WorkerRecord, encode_limits
from dllmserve.engine.inputs import ModelLimits
from dllmserve.worker.config import WorkerConfig
from dllmserve.worker.snapshot import Snapshot

log = logging.getLogger(__name__)


def fixed_record(model: str, device: str, slots: int, limits: ModelLimits | None) -> WorkerRecord:
    """The fields of the worker's record that no beat changes."""
    return WorkerRecord(
        model=model,
        device=device,
        host=socket.gethostname(),
        slots=slots,
        limits=encode_limits(limits) if limits is not None else "",
    )


class Heartbeat(threading.Thread):
    def __init__(
        self,
        client: redis.Redis,
        cfg: WorkerConfig,
        fixed: WorkerRecord,
        snapshot: Callable[[], Snapshot],
        *,
        draining: threading.Event,
        paused: threading.Event,
        reaped: threading.Event,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.r = client
        self.interval_s = cfg.heartbeat_interval_s
        self.ttl_ms = int(cfg.heartbeat_ttl_s * 1000)
        self.fixed = fixed
        self.snapshot = snapshot
        self.draining, self.paused, self.reaped = draining, paused, reaped
        self.halt = threading.Event()
        self._registered_as = ""  # the worker id of the last beat (the loop's id may change)

    @property
    def registered(self) -> bool:
        """The last beat registered the loop's current id (readiness)."""
        return self._registered_as == self.snapshot().worker_id

    def beat(self) -> None:
        snap = self.snapshot()
        wid, st = snap.worker_id, snap.stats
        if self._registered_as == wid and not self.r.sismember(rk.WORKERS, wid):
            self.reaped.set()
        record = dataclasses.replace(
            self.fixed,
            state=DRAINING if self.draining.is_set() else READY,
            running=st.get("running", 0),
            waiting=st.get("waiting", 0),
            free_pages=st.get("free_pages", 0),
            total_pages=st.get("total_pages", 0),
            max_num_seqs=st.get("max_num_seqs", 0),
            steps=snap.steps,
            t=time.time(),
        )
        pipe = self.r.pipeline(transaction=False)
        record.write(pipe, wid, self.ttl_ms)
        pipe.execute()
        if self.paused.is_set():  # the watchdog withdrew us while this beat was on its way
            self.r.delete(rk.worker_key(wid))
            return
        self._registered_as = wid

    def run(self) -> None:
        backoff = Backoff(log, "heartbeat")  # beats go on; the warnings thin out
        while not self.halt.wait(self.interval_s):
            if self.paused.is_set():
                continue
            try:
                self.beat()
                backoff.ok()
            except redis.exceptions.RedisError as e:
                backoff.failed(e)
