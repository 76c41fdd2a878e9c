"""Helpers shared by the service tests."""

from __future__ import annotations

import time


def wait_for(pred, timeout_s: float = 60.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns something truthy (bounded; no timing is asserted)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")
