"""benchmarks/structured_overhead.py runs end to end on the tiny shapes on the CPU (the GPU runs
at LLaDA-8B's and LLaDA2.0-mini's shapes are the ones that count): both modes at each batch, in
one run, and every constrained answer is accepted by the schema's automaton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape", ["tiny", "tiny-llada2"])
def test_structured_overhead_smoke(shape):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "structured_overhead.py"), "--shape",
           shape, "--device", "cpu", "--smoke"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["batch"], r["mode"]) for r in rows] == [
        (1, "free"), (1, "tool-call schema"), (2, "free"), (2, "tool-call schema"),
    ]  # fmt: skip
    assert all(r["steps_timed"] > 0 and r["step_ms_median"] > 0 for r in rows)
    assert [r["answers_valid"] for r in rows if r["mode"] != "free"] == [1, 2]
    assert "overhead" in proc.stdout
