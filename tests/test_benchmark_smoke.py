"""The benchmarks run end to end on the tiny shape on the CPU (CI has no GPU; the numbers are
not the point, the scripts are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "extra", [[], ["--steps", "8", "--quantization", "fp8"], ["--skinny-gemm", "both"]]
)
def test_offline_benchmark_smoke(tmp_path, extra):
    """Also with several tokens per step (--steps below --gen) and FP8 weights, and with every
    configuration run with the library's GEMMs, then the skinny GEMM (on the CPU the setting
    changes nothing, but each row records it)."""
    out = tmp_path / "offline.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "offline.py"), "--shapes", "tiny",
           "--device", "cpu", "--smoke", "--json", str(out), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    modes = {(r["batch"], r["mode"]) for r in doc["results"]}
    assert {(1, "dense"), (1, "r=0.5"), (2, "r=0.3")} <= modes
    sparse = [r for r in doc["results"] if r["mode"] != "dense"]
    assert all(r["committed_tokens"] == r["batch"] * 16 for r in sparse)  # every token decided
    assert all(set(r["step_ms"]) == {"FULL", "SELECT", "REUSE"} for r in sparse)
    assert "x naive" in proc.stdout and "x lib" in proc.stdout
    assert doc["args"]["steps"] == (8 if "--steps" in extra else 16)
    assert doc["args"]["quantization"] == ("fp8" if "--quantization" in extra else None)
    # --skinny-gemm both: every configuration with the library's GEMMs, then again with the kernel
    settings = [False, True] if "both" in extra else [False]
    assert doc["args"]["skinny_gemm"] == ("both" if "both" in extra else "off")
    n = len(doc["results"]) // len(settings)
    first = [(r["batch"], r["mode"]) for r in doc["results"][:n]]
    for i, setting in enumerate(settings):
        part = doc["results"][i * n : (i + 1) * n]
        assert [(r["batch"], r["mode"]) for r in part] == first
        assert all(r["skinny_gemm"] is setting for r in part)
    assert (" skinny " in proc.stdout) == ("both" in extra)  # the table's GEMM column


@pytest.mark.parametrize(
    "scale, counts, shape, ratio",
    [("2", [2], "tiny", "0.5"), ("3 2", [2, 3], "tiny", "0.5"), ("2", [2], "tiny-llada2", "none")],
)
def test_serving_benchmark_script_smoke(tmp_path, scale, counts, shape, ratio):
    """benchmarks/serving_gpu.sh scaled down to the tiny shape on the CPU: offline engine, one
    worker at a rate and at saturation, then each SCALE worker count (ascending) at 2 req/s per
    worker and at saturation, each against one worker, all written to $OUT. RATES=2 is the one
    worker's 2 req/s, so its scaling row carries a rate phase too. The block-diffusion shape runs
    dense (RATIO=none), as issue 28's LLaDA2.0-mini run does."""
    pytest.importorskip("grpc")
    pytest.importorskip("redis")
    from dllmserve.scheduler.local_redis import find_redis_server

    if find_redis_server() is None and not os.environ.get("CI"):
        pytest.skip("no redis-server")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "SHAPE": shape,
           "RATIO": ratio, "DEVICE": "cpu", "PROMPT": "16", "GEN": "16", "STEPS": "16",
           "BLOCK": "8", "RATES": "2", "NUM": "3", "SAT": "4", "SCALE": scale,
           "OMP_NUM_THREADS": "1", "DLLMSERVE_COMMIT": "c0ffee1"}  # fmt: skip
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "serving_gpu.sh")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads((tmp_path / "serving.json").read_text())
    assert doc["commit"] == "c0ffee1"  # named where the tree's .git may be stale
    assert doc["args"]["ratio"] == str(None if ratio == "none" else float(ratio))
    assert "commit: c0ffee1" in (tmp_path / "env.txt").read_text()
    assert [r["rate"] for r in doc["results"]] == [2.0, float("inf")]
    assert doc["results"][0]["requests"] == 3 and doc["results"][1]["requests"] == 4
    # each count: arrivals at 2 req/s per worker (NUM per worker), then saturation (SAT per worker)
    inf = float("inf")
    assert [(r["workers"], r["rate"]) for r in doc["scaled"]] == [
        (n, rate) for n in counts for rate in (2.0 * n, inf)
    ]
    for r in doc["scaled"]:
        per_worker = 4 if r["rate"] == inf else 3
        assert r["requests"] == per_worker * r["workers"] == sum(r["requests_per_worker"])
    for r in doc["scaled"][1::2]:  # every worker served at saturation
        assert len(r["requests_per_worker"]) == r["workers"]
    assert doc["offline"]["tokens_per_s"] > 0 and doc["offline"]["requests"] == 4
    s = doc["summary"]
    assert s["service_vs_offline"] > 0
    scaling = s["scaling"]  # one worker, then each count, against one worker
    assert [row["workers"] for row in scaling] == [1, *counts]
    assert scaling[0]["speedup"] == scaling[0]["efficiency"] == 1.0
    for row, run in zip(scaling[1:], doc["scaled"][1::2], strict=True):
        assert row["tokens_per_s"] == run["tokens_per_s"]
        assert row["speedup"] == pytest.approx(run["tokens_per_s"] / scaling[0]["tokens_per_s"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["workers"])
        assert f"{row['workers']} workers at saturation" in proc.stdout
    # each row's rate phase (the one worker's from RATES=2): its own run's figures, sane
    for row, run in zip(scaling, [doc["results"][0], *doc["scaled"][::2]], strict=True):
        p = row["poisson"]
        assert p["rate"] == run["rate"] == 2.0 * row["workers"]
        assert p["requests"] == 3 * row["workers"]
        assert p["within_step_plus_20ms"] == run["within_step_plus_20ms"]
        assert 0 <= p["within_step_plus_20ms"] <= 1
        assert 0 < p["ttfu_p50_s"] <= p["ttfu_p99_s"] and p["tokens_per_s"] > 0
        assert (p["ttfu_p50_s"], p["tokens_per_s"]) == (run["ttfu_p50_s"], run["tokens_per_s"])
        line = f"{row['workers']} worker(s) at {p['rate']:g} req/s ({p['requests']} requests): "
        assert line + f"{100 * p['within_step_plus_20ms']:.0f}% of first updates" in proc.stdout
    for r in doc["results"] + doc["scaled"]:
        assert r["step_p50_s"] > 0 and 0 <= r["within_step_plus_20ms"] <= 1
        assert 0 < r["accept_p50_s"] <= r["ttfu_p50_s"]
    assert "x one worker" in proc.stdout and "of the offline engine" in proc.stdout
    logs = {p.name for p in (tmp_path / "logs").iterdir()}
    assert logs == {"offline.log", "service-1w.log", *(f"service-{n}w.log" for n in counts)}
    assert (tmp_path / "serving.log").is_file() and (tmp_path / "env.txt").is_file()


def test_block_diffusion_script_runs_each_measurement_and_reports_a_failure(tmp_path):
    """benchmarks/block_diffusion_gpu.sh at the tiny LLaDA2 on the CPU: every script it runs
    writes its log (and JSON) under $OUT with the asked quantization; one that fails (the
    prefix-cache run here, through a PYTHON that refuses it) is named, the rest still run, and
    the exit status is 1."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *prefix_cache.py*) exit 3 ;; esac\n'
                       f'exec {sys.executable} "$@"\n')  # fmt: skip
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": str(wrapper), "SHAPE": "tiny-llada2",
           "DEVICE": "cpu", "SMOKE": "--smoke", "QUANTS": "bf16 fp8-experts",
           "PREFIX_QUANTS": "bf16", "TIMELINE_QUANTS": "fp8-experts", "TAG": "_x",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    script = str(ROOT / "benchmarks" / "block_diffusion_gpu.sh")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "!! prefix_cache_bf16_x: exit 3" in proc.stdout
    assert "== failed: prefix_cache_bf16_x" in proc.stdout
    for name, quant, rows in [("offline_b1_bf16", None, "results"),
                              ("offline_b1_fp8-experts", "fp8-experts", "results"),
                              ("offline_b64", None, "results"),
                              ("timeline_fp8-experts", "fp8-experts", "runs")]:  # fmt: skip
        doc = json.loads((out / f"{name}_x.json").read_text())
        assert doc["args"]["quantization"] == quant and doc[rows], name
    assert '"mode": "tool-call schema"' in (out / "structured_x.log").read_text()
    env["QUANTS"] = "int4"
    bad = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "QUANTS: bf16, fp8 or fp8-experts, got 'int4'" in bad.stderr


def test_train_tiny_smoke(tmp_path):
    """benchmarks/train_tiny.py --smoke trains a few steps, continues from its own output
    (--init) and writes a checkpoint that the engine loads and generates with."""
    corpus = tmp_path / "fortunes.txt"
    corpus.write_text(
        "\n%\n".join(f"Fortune number {i}: patience is a virtue." for i in range(300))
    )
    script = str(ROOT / "benchmarks" / "train_tiny.py")
    first, second = tmp_path / "s1", tmp_path / "s2"
    base = [sys.executable, script, "--smoke", "--corpus", str(corpus)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in (base + ["--out", str(first)], base + ["--out", str(second), "--init", str(first)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    before, log = (json.loads((d / "training.json").read_text()) for d in (first, second))
    assert log["steps"] == 20 and log["init"] == str(first)
    assert set(log["heldout_masked_loss"]) == {"recall", "copy", "add", "text"}
    # the second stage starts from the first one's weights and goes on learning
    assert log["loss_curve"][-1][1] < before["loss_curve"][-1][1]

    from dllmserve import LLM, SamplingParams

    # a third stage with the plain mean loss, a drill-heavy mix and a curriculum keeps the
    # second's arch, probes the recall lookup every 10 steps and saves a checkpoint each time
    third = tmp_path / "s3"
    cmd = base + ["--out", str(third), "--init", str(second), "--loss", "mean", "--mix", "0,0.8"]
    cmd += ["--bucket-weights-end", "0,1,1,1,1", "--probe-every", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log3 = json.loads((third / "training.json").read_text())
    assert log3["loss"] == "mean" and log3["mix"] == {"text": 0.0, "drill": 0.8}
    assert log3["arch"] == log["arch"] and log3["steps"] == 20
    assert log3["bucket_weights_end"]["128"] == 0 and log3["bucket_weights_end"]["2048"] == 1
    assert [step for step, _ in log3["recall_probe"]] == [10, 20]
    assert all(set(p) == {"128", "256"} for _, p in log3["recall_probe"])
    assert "step 10 recall probe" in proc.stdout

    llm = LLM(str(second), device="cpu")
    out = llm.generate(
        ["Repeat exactly: ab"], SamplingParams(gen_length=8, steps=4), use_tqdm=False
    )
    assert len(out[0]["token_ids"]) == 8


def test_train_tiny_curriculum_moves_the_bucket_weights(monkeypatch):
    """--bucket-weights-end: the mix goes linearly from the start's weights to the end's over
    the run's time, and stays at the end's once the time is spent."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import train_tiny

    rows = train_tiny.Rows(0, 2048, ["x"], False, (4, 4, 2, 0, 0), (0.1, 0.3), (0, 0, 2, 4, 4), 100)
    assert rows._weights(0) == [4, 4, 2, 0, 0]
    assert rows._weights(50) == [2, 2, 2, 2, 2]
    assert rows._weights(1000) == [0, 0, 2, 4, 4]


def test_relay_probe_smoke(tmp_path):
    """benchmarks/relay.py: the service with a fake engine, a rate, then a burst; per request
    the worker's first record -> client time from the timestamps in Redis."""
    pytest.importorskip("grpc")
    pytest.importorskip("redis")
    from dllmserve.scheduler.local_redis import find_redis_server

    if find_redis_server() is None and not os.environ.get("CI"):
        pytest.skip("no redis-server")
    out = tmp_path / "relay.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "relay.py"), "--step-ms", "5",
           "--steps", "4", "--rates", "20", "--num-requests", "4", "--burst", "4",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [(r["rate"], r["requests"]) for r in doc["results"]] == [(20.0, 4), (float("inf"), 4)]
    for r in doc["results"]:
        assert 0 < r["relay"]["p50_ms"] <= r["relay"]["max_ms"]
        assert r["admit_to_first"]["p50_ms"] >= r["worker_first"]["p50_ms"] > 0
    assert doc["scheduler_cpu_ms_per_request"] > 0


def test_prefix_cache_benchmark_smoke(tmp_path):
    """benchmarks/prefix_cache.py on the tiny block-diffusion shape: the shared-prompt request
    hits the prefix cache (the miss does not), and both first updates are timed."""
    out = tmp_path / "prefix.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "prefix_cache.py"), "--shape", "tiny-llada2",
           "--device", "cpu", "--smoke", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["first_update_ms_median"]) == {"hit", "miss"}
    # fill, hit, miss: the hit found the fill's blocks, the others found none
    assert 0 < doc["prefix_cache_hit_rate"] < 1
