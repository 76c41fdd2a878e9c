"""benchmarks/skinny_gemm.py --smoke: the skinny GEMM's three kinds in Triton's interpreter on
the tiny shape's layers, against the library's results (CI has no GPU: the script is the point,
not the numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_skinny_gemm_benchmark_smoke(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "skinny.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "skinny_gemm.py"), "--smoke",
           "--tokens", "1", "33", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["args"]["smoke"] and doc["args"]["shapes"] == ["tiny"]
    layers = {(r["layer"], r["m"]) for r in doc["layers"]}
    assert layers == {(name, m) for name in ("qkv", "o", "gate_up", "down") for m in (1, 33)}
    for r in doc["layers"]:
        assert max(r["bf16_max_err"], r["w8_max_err"], r["w8a8_max_err"]) < 1e-4, r
