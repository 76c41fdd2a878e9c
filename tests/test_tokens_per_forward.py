"""benchmarks/tokens_per_forward.py: what its table must hold whatever the model decodes.

One token per step commits exactly one canvas token per forward, in the phases the sparse
schedule plans; a threshold never commits fewer and never takes more forwards; the projection
gives back the offline benchmark's own tokens/s on the schedule that benchmark ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tokens_per_forward as tpf  # noqa: E402


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("tpf") / "tpf.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "tokens_per_forward.py"), "--n", "2",
           "--tasks", "recall", "--contexts", "128", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Projected committed tokens/s" in proc.stdout
    return {**json.loads(out.read_text()), "path": str(out)}


def test_records_provenance_and_every_cell(doc: dict) -> None:
    meta = doc["meta"]
    for key in ("git commit", "date", "machine", "command", "examples per cell", "projection"):
        assert meta[key]
    assert doc["gpu"]["card"] and doc["gpu"]["file"] == tpf.GPU_JSON.name
    assert [(j["cell"], j["mode"]) for j in doc["results"]] == [
        ("recall@128", "dense"), ("recall@128", "r=0.7 d=5 hs=on")
    ]  # fmt: skip
    for job in doc["results"]:
        assert [r["threshold"] for r in job["rows"]] == list(tpf.THRESHOLDS)
        for r in job["rows"]:
            assert 0 <= r["accuracy"] <= 1 and r["n"] == 2
            assert sum(r["phases"].values()) == pytest.approx(r["forwards_per_request"])
            assert r["answer_per_forward"] <= r["committed_per_forward"]
            assert r["projected"]["b1"] > 0 and r["projected"]["b32"] > 0  # prompt 128
            share = r["answer_per_forward"] / r["committed_per_forward"]
            assert r["projected_answer"]["b1"] == pytest.approx(r["projected"]["b1"] * share)


def test_render_projects_a_saved_run_again(doc: dict, tmp_path, capsys) -> None:
    out = tmp_path / "again.json"
    tpf.main(["--render", doc["path"], "--json", str(out)])
    again = json.loads(out.read_text())
    assert again["results"] == doc["results"] and again["meta"] == doc["meta"]
    assert "Projected answer tokens/s" in capsys.readouterr().out


def test_one_token_per_step_is_one_per_forward_in_the_planned_phases(doc: dict) -> None:
    dense, sparse = (job["rows"][0] for job in doc["results"])
    for row in (dense, sparse):
        assert row["threshold"] is None and row["exact_one_per_forward"]
        assert row["committed_per_forward"] == 1.0 and row["forwards_per_request"] == 32
    assert dense["phases"] == {"FULL": 32, "SELECT": 0, "REUSE": 0}
    assert sparse["phases"] == {"FULL": 5, "SELECT": 1, "REUSE": 26}  # delay 5, block 32


def test_a_threshold_commits_at_least_the_schedule(doc: dict) -> None:
    for job in doc["results"]:
        base, *rest = job["rows"]
        for r in rest:
            assert r["committed_per_forward"] >= 1.0
            assert r["forwards_per_request"] <= base["forwards_per_request"]


def test_projection_gives_back_the_offline_benchmark() -> None:
    """Dense: one token per FULL step. r=0.5, delay 1 (the offline run's schedule): per block
    of 32 one FULL, one SELECT, 30 REUSE, one token each; tokens/s as the run measured it."""
    gpu = tpf.load_gpu(tpf.GPU_JSON)
    measured = json.loads(tpf.GPU_JSON.read_text())["results"]
    for row in measured:
        if row["shape"] != "llada-8b" or row["mode"] not in ("dense", "r=0.5"):
            continue
        ms = tpf.step_ms(gpu, row["prompt"], row["batch"], row["mode"])
        mix = {"FULL": 32} if row["mode"] == "dense" else {"FULL": 1, "SELECT": 1, "REUSE": 30}
        got = tpf.projected_tokens_per_s(1.0, mix, ms, row["batch"])
        assert got == pytest.approx(row["tokens_per_s"], rel=0.02)


def test_step_times_between_measured_prompts_are_interpolated() -> None:
    gpu = tpf.load_gpu(tpf.GPU_JSON)
    lo, hi = (tpf.step_ms(gpu, p, 1, "r=0.5") for p in (128, 2048))
    mid = tpf.step_ms(gpu, 1088, 1, "r=0.5")
    assert mid == {p: pytest.approx((lo[p] + hi[p]) / 2) for p in lo}
    assert tpf.step_ms(gpu, 40, 1, "dense") == tpf.step_ms(gpu, 128, 1, "dense")  # clamped
    assert tpf.step_ms(gpu, 512, 32, "dense") is None  # batch 32 measured at prompt 128 only


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--contexts", "100"], "--contexts: [100] not among"),
        (["--contexts", "12x"], "comma-separated numbers"),
        (["--thresholds", "1.5"], "--thresholds: [1.5] outside [0, 1]"),
        (["--tasks", "sort"], "--tasks: unknown ['sort']"),
        (["--procs", "3"], "--procs 1 or 2"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, words, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        tpf.main(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_a_render_of_something_else_is_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text("{}")
    with pytest.raises(SystemExit) as e:
        tpf.main(["--render", str(path)])
    assert str(e.value).startswith("error: --render: not a saved run")


@pytest.mark.parametrize(
    "content, words", [(None, "No such file"), ('{"results": []}', "no llada-8b row")]
)
def test_a_missing_or_short_gpu_json_is_a_one_line_error(tmp_path, content, words) -> None:
    path = tmp_path / "offline.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        tpf.main(["--gpu-json", str(path)])
    assert str(e.value).startswith("error: --gpu-json:") and "\n" not in str(e.value)
    assert words in str(e.value)
