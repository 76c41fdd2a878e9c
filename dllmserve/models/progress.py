"""Progress ticks from inside a forward, so a long iteration can show it is still moving.

A worker's stall watchdog (worker/watchdog.py) must tell an iteration that is merely slow (a
large FULL forward on a loaded CPU) from one that is stuck. The model's forward ticks once per
layer; the watchdog samples `ticks` and measures a stall from the last change, not from the
start of the iteration. A tick is one integer increment (a replayed CUDA graph ticks not at
all, and the watchdog then times the whole iteration, as before).

`hook` (None unless the worker's fault injection sets one) runs after each tick: the fault
tests use it to slow every layer down without stopping progress.
"""

from __future__ import annotations

from collections.abc import Callable

ticks = 0  # layers forwarded by this process so far (read by the watchdog's thread)
hook: Callable[[], None] | None = None


def tick() -> None:
    global ticks
    ticks += 1
    if hook is not None:
        hook()
