"""What the worker loop publishes for its other threads: one immutable value per iteration.

The heartbeat and the metrics' gauges (the HTTP thread) read the loop's state; rather than
reading its members while it changes them, they read the last `Snapshot`, which the loop
replaces whole (one reference assignment) after each iteration, so a reader never sees half of
an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Snapshot:
    worker_id: str  # the id the loop serves under (a rejoin changes it)
    steps: int = 0  # engine iterations run
    stats: Mapping[str, float] = field(default_factory=dict)  # engine.stats(), and "active"
