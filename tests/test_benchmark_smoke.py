"""The offline benchmark runs end to end on a tiny shape (CI has no GPU; the numbers are not
the point, the script is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_offline_benchmark_smoke(tmp_path):
    out = tmp_path / "offline.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "offline.py"), "--shape", "tiny",
           "--device", "cpu", "--smoke", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    modes = {(r["batch"], r["mode"]) for r in doc["results"]}
    assert {(1, "dense"), (1, "r=0.5"), (2, "r=0.3")} <= modes
    sparse = [r for r in doc["results"] if r["mode"] != "dense"]
    assert all(r["committed_tokens"] == r["batch"] * 16 for r in sparse)  # every token decided
    assert all(set(r["step_ms"]) == {"FULL", "SELECT", "REUSE"} for r in sparse)
    assert "x naive" in proc.stdout
