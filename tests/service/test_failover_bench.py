"""benchmarks/serving.py's failover phase on the CPU: two workers, the busiest killed with SIGKILL
mid-stream; every request finishes, re-delivered to the survivor, with the fault-free tokens. With
scaling runs (--scale-workers) the phase runs in the service with the most workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.load
@pytest.mark.parametrize(
    "workers, killed_in",
    [(["--workers", "2"], 2), (["--workers", "1", "--scale-workers", "3", "2"], 3)],
)
def test_failover_phase_redelivers_with_identical_tokens(tmp_path, workers, killed_in):
    out = tmp_path / "serving.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serving.py"), "--random-shape", "tiny",
           "--device", "cpu", *workers, "--rates", "inf", "--saturation-requests", "1",
           "--num-requests", "1",
           "--warmup", "0", "--no-offline", "--prompt-tokens", "16", "--gen", "64", "--steps",
           "64", "--block", "32", "--failover", "4", "--json", str(out),
           "--log-dir", str(tmp_path / "logs")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLLMSERVE_COMMIT": "c0ffee1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    fo = doc["failover"]
    assert fo["requests"] == 4 and fo["reference_finished"] == 4 and fo["finished"] == 4
    assert fo["errors"] == []
    assert fo["identical"] == 4 and fo["not_identical"] == []  # each its fault-free tokens
    killed = fo["killed"]["worker"]
    assert fo["killed"]["assigned"] >= 2  # the busiest of <= 3 workers holding four requests
    assert 1 <= fo["redelivered"] == fo["redelivered_identical"] <= fo["killed"]["assigned"]
    assert killed not in fo["rerun_on"] and sum(fo["rerun_on"].values()) == fo["redelivered"]
    assert len(fo["recovery_s"]) == fo["redelivered"] and min(fo["recovery_s"]) > 0
    assert fo["recovery_p50_s"] <= fo["recovery_p99_s"] <= fo["recovery_max_s"]
    assert "4/4 with the fault-free tokens" in proc.stdout
    # the kill was the benchmark's SIGKILL, which serve saw (and restarted the worker after), in
    # the service with the most workers only
    logs = {p.name: p.read_text() for p in (tmp_path / "logs").glob("service-*w.log")}
    assert {name for name, text in logs.items() if "killed by SIGKILL" in text} == {
        f"service-{killed_in}w.log"
    }
    # each scaling service: one request per worker at 2 req/s per worker, then saturation
    counts = [2, 3] if killed_in == 3 else []
    runs = [(r["workers"], r["rate"], r["requests"]) for r in doc.get("scaled", [])]
    assert runs == [(n, rate, n) for n in counts for rate in (2.0 * n, float("inf"))]
    rows = doc["summary"].get("scaling", [])
    assert [(row["workers"], "poisson" in row) for row in rows] == (
        [(1, False), (2, True), (3, True)] if counts else []
    )
    for row in rows[1:]:
        p = row["poisson"]
        assert (p["rate"], p["requests"]) == (2.0 * row["workers"], row["workers"])
        assert 0 <= p["within_step_plus_20ms"] <= 1 and p["tokens_per_s"] > 0
        assert 0 < p["ttfu_p50_s"] <= p["ttfu_p99_s"]
