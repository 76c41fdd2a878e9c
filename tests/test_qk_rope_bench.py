"""benchmarks/qk_rope.py runs on tiny shapes on the CPU (the kernel under the Triton
interpreter) and its two paths compute the same q and k."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_qk_rope_benchmark_smoke(tmp_path):
    out = tmp_path / "qk_rope.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "qk_rope.py"), "--smoke", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["qk_norm"]) for r in rows] == [("tiny-moe", True), ("tiny", False)]
    assert rows[0]["rot_dim"] < rows[0]["head_dim"]  # the partial rotary is exercised
    assert rows[0]["max_abs_diff"] < 1e-5  # fp32: the norm's sum order only
    assert rows[1]["max_abs_diff"] == 0  # no norm: the same rounding steps
