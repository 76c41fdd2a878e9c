"""benchmarks/timeline.py: its split of a GPU trace by iteration (on a hand-made trace whose
numbers are known), and an end-to-end CPU run on the tiny shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

timeline = pytest.importorskip("timeline")


def _x(cat: str, name: str, ts: float, dur: float, corr: int | None = None) -> dict:
    args = {"correlation": corr} if corr is not None else {}
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": args}


def _gpu_trace() -> dict:
    """Two iterations: a FULL one (prepare's upload, two kernels with a 5 us bubble) and a
    REUSE one launched by a graph; a kernel launched outside both; one whose launch the trace
    lacks (it follows REUSE's kernels on the stream); one that ran before them all."""
    return {
        "traceEvents": [
            _x("user_annotation", "dllm.prepare", 0, 10),
            _x("cuda_runtime", "cudaMemcpyAsync", 2, 1, corr=1),
            _x("user_annotation", "dllm.launch FULL", 10, 20),
            _x("cuda_driver", "cuLaunchKernelEx", 12, 1, corr=2),
            _x("cuda_runtime", "cudaLaunchKernel", 14, 1, corr=3),
            _x("user_annotation", "dllm.prepare", 40, 5),
            _x("user_annotation", "dllm.launch REUSE", 45, 10),
            _x("cuda_runtime", "cudaGraphLaunch", 46, 2, corr=4),
            _x("cuda_runtime", "cudaLaunchKernel", 200, 1, corr=9),  # outside every range
            _x("gpu_memcpy", "Memcpy HtoD", 20, 5, corr=1),
            _x("kernel", "gemm", 25, 30, corr=2),
            _x("kernel", "rope", 60, 10, corr=3),
            _x("kernel", "graph_gemm", 100, 40, corr=4),
            _x("kernel", "graph_attn", 140, 20, corr=4),
            _x("kernel", "stray", 210, 1, corr=9),
            _x("kernel", "unlaunched", 160, 2, corr=7),  # its launch is not in the trace
            _x("kernel", "before_window", 1, 1, corr=6),  # ran before any iteration's op
        ]
    }


def test_gpu_trace_split_by_iteration():
    its, counts = timeline.iterations(_gpu_trace(), on_gpu=True)
    assert [it.phase for it in its] == ["FULL", "REUSE"]
    assert counts == {"unattributed": 2, "inferred": 1}  # stray, before_window; unlaunched
    assert [o[2] for o in its[1].ops] == ["graph_gemm", "graph_attn", "unlaunched"]
    (full,) = timeline.per_iteration(its)  # the last iteration has no next: left out
    assert full["wall_us"] == 100 - 20  # first op of FULL to the first of REUSE
    assert full["busy_us"] == 5 + 30 + 10  # the copy, then the kernels (one 5 us bubble)
    assert full["idle_us"] == 80 - 45
    assert full["gap_us"] == 100 - 70
    assert full["host_us"] == 10 + 20
    assert full["kernels"] == 2  # the copy is busy time, not a kernel
    assert full["kernel_us"] == {"gemm": 30, "rope": 10}
    phases = timeline.by_phase([full])
    assert phases["FULL"]["idle_pct"] == pytest.approx(100 * 35 / 80)
    assert [k["name"] for k in phases["FULL"]["top_kernels"]] == ["gemm", "rope"]


@pytest.mark.parametrize("shape", ["tiny", "tiny-llada2"])
def test_timeline_smoke(tmp_path, shape):
    """The sparse shape's window is its second block: FULL, SELECT, then REUSE steps; the
    block-diffusion shape's steps are all full forwards of their block."""
    out = tmp_path / "timeline.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "timeline.py"), "--smoke", "--shape", shape,
           "--json", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| shape | batch | phase |" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [r["batch"] for r in runs] == [1, 2]
    for run in runs:
        phases = [i["phase"] for i in run["iterations"]]
        if shape == "tiny":
            assert phases[:3] == ["FULL", "SELECT", "REUSE"]
            assert set(run["phases"]) == {"FULL", "SELECT", "REUSE"}
        else:
            assert set(phases) == {"FULL"} and run["mode"] == "dense"
        for it in run["iterations"]:
            assert 0 < it["busy_us"] <= it["wall_us"] + 1e-6
            assert it["kernels"] > 0 and it["host_us"] > 0
        assert all(p["top_kernels"] for p in run["phases"].values())
