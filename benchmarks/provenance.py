"""The commit a benchmark ran at, recorded with every result it writes."""

from __future__ import annotations

import os
import subprocess


def commit() -> str:
    """The checkout's short commit. DLLMSERVE_COMMIT overrides it: a copy of the tree on a GPU
    machine may carry a stale .git."""
    if os.environ.get("DLLMSERVE_COMMIT"):
        return os.environ["DLLMSERVE_COMMIT"]
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"
