"""What the dispatcher has done (its counters and the workers it reaped), for GetServerInfo,
the metrics and the reclaimer that adds to them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DispatcherState:
    leader: bool = False
    dispatched: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    reaped_workers: deque = field(default_factory=lambda: deque(maxlen=100))
