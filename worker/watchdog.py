"""The stall watchdog: an engine iteration that stops making progress takes its worker out.

The heartbeat runs on a thread of its own, so a step that never ends (a hung device, a request
whose cost has no bound) keeps the worker looking alive while every request on it starves. The
watchdog times each iteration from its start or its last sign of progress, whichever is later
(the model ticks once per layer: dllmserve.models.progress). One that has gone longer than

    max(floor_s, factor x the moving average of recent iterations)

without progress trips it once, so an iteration that is merely slow (a large full forward on a
loaded CPU, each layer well within the limit) is never taken for a stall. A trip happens
once: `on_stall` runs (on the watchdog's thread) and `tripped` stays set until the
loop, its step back, has dropped its work and `reset` it. The average is an exponential one
(weight `ALPHA` for the newest iteration) and leaves out the iteration that tripped; the floor
covers the first iterations (kernel compilation, CUDA graph capture) and short bursts of long
full-forward steps among cheap ones. The loop's thread alone writes the iteration's start and
the average (each one reference, replaced whole); the watchdog's thread only reads them and
sets `tripped`, which the loop clears (`reset`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from dllmserve.models import progress

log = logging.getLogger(__name__)

ALPHA = 0.1


class Watchdog(threading.Thread):
    def __init__(
        self, factor: float, floor_s: float, on_stall: Callable[[float, float], None]
    ) -> None:
        super().__init__(name="watchdog", daemon=True)
        if factor < 1 or floor_s <= 0:
            raise ValueError(f"stall factor must be >= 1 and floor > 0, got {factor}, {floor_s}")
        self.factor = factor
        self.floor_s = floor_s
        self.on_stall = on_stall
        self.average_s: float | None = None
        self.tripped = threading.Event()
        self.halt = threading.Event()
        self._iteration_start: float | None = None  # monotonic start of the iteration in progress

    def limit_s(self) -> float:
        """How long an iteration may run before it counts as a stall."""
        if self.average_s is None:
            return self.floor_s
        return max(self.floor_s, self.factor * self.average_s)

    @contextlib.contextmanager
    def iteration(self) -> Iterator[None]:
        start = time.monotonic()
        self._iteration_start = start
        try:
            yield
        finally:
            self._iteration_start = None
            took = time.monotonic() - start
            if not self.tripped.is_set():
                avg = self.average_s
                self.average_s = took if avg is None else avg + ALPHA * (took - avg)

    def reset(self) -> None:
        """The loop has dealt with a stall: watch again."""
        self.tripped.clear()

    def run(self) -> None:
        poll_s = min(1.0, self.floor_s / 4)
        seen, moved = progress.ticks, time.monotonic()  # the last tick seen, and when
        while not self.halt.wait(poll_s):
            now = time.monotonic()
            if progress.ticks != seen:
                seen, moved = progress.ticks, now
            started = self._iteration_start
            if started is None or self.tripped.is_set():
                continue
            ran, limit = now - max(started, moved), self.limit_s()
            if ran > limit:
                self.tripped.set()
                try:
                    self.on_stall(ran, limit)
                except Exception:  # Redis down: the heartbeat is stopped all the same
                    log.exception("watchdog: handling the stall failed")
