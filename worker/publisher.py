"""Ordered Redis writes of the worker, off the engine's thread.

Publishing an iteration's step records (building protobufs, rendering canvases, packing the Redis
call) costs tens of microseconds per request. Done on a thread of its own, it overlaps the
next `engine.step()`, whose GPU work and host syncs run without the GIL. Jobs run strictly in
submission order (a request's last step record before its Completed, the Completed before its
batch is acknowledged); the queue is short, so the engine never runs far ahead of its stream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis.exceptions

log = logging.getLogger(__name__)


class Publisher(threading.Thread):
    def __init__(self, maxsize: int = 2) -> None:
        super().__init__(name="publisher", daemon=True)
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)

    def submit(self, job: Callable[[], None]) -> None:
        self._q.put(job)

    def flush(self) -> None:
        """Wait until every job submitted so far has run."""
        self._q.join()

    def close(self) -> None:
        self._q.put(None)
        self.join(timeout=60)

    def run(self) -> None:
        while True:
            job = self._q.get()
            try:
                if job is None:
                    return
                while True:  # a lost write would break the stream: retry until Redis is back
                    try:
                        job()
                        break
                    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
                        log.warning("publisher: redis unavailable (%s); retrying", e)
                        time.sleep(0.5)
            except Exception:
                log.exception("publishing failed")
            finally:
                self._q.task_done()


class InlinePublisher:
    """The same interface, running each job at once (no thread)."""

    def submit(self, job: Callable[[], None]) -> None:
        job()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def start(self) -> None:
        pass
