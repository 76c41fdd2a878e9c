"""benchmarks/moe.py runs end to end on a tiny shape on the CPU (the fused kernel under the
Triton interpreter), and the alternatives it times on the GPU compute the same layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_moe_benchmark_smoke(tmp_path):
    out = tmp_path / "moe.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "moe.py"), "--smoke", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["T"] for r in rows] == [1, 9]
    for r in rows:
        assert r["err_fused_bf16_vs_fp32"] < 1e-5  # fp32 on the CPU
        assert r["err_fused_fp8_vs_fp8_reference"] < 1e-5
        assert 1e-3 < r["err_fused_fp8_vs_fp32"] < 0.1  # FP8's own error, not a wrong sum
        assert r["err_loop_vs_fp32"] < 1e-5
        assert r["err_grouped_mm_vs_fp32"] < 1e-5
