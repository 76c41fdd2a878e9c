"""The MoE random shapes: the published LLaDA-MoE-7B-A1B values, a tiny one that serves on the
CPU, the benchmark on it, and the sizing facts (activations, roofline) that count the experts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dllmserve import SamplingParams
from dllmserve.engine.engine import Engine
from dllmserve.models.config import ModelConfig
from dllmserve.models.shapes import SHAPES, random_model

ROOT = Path(__file__).resolve().parents[1]


def test_llada_moe_7b_is_the_published_shape():
    cfg = SHAPES["llada-moe-7b"]
    moe = cfg.moe
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (
        2048, 16, 16, 16, 128,
    )  # fmt: skip
    assert (moe.num_experts, moe.top_k, moe.expert_hidden, moe.shared_hidden) == (64, 8, 1024, 0)
    assert moe.moe_layers == (True,) * 16 and moe.router == "softmax"
    assert (cfg.vocab_size, cfg.rope_theta, cfg.max_len) == (157184, 50000.0, 8192)
    assert cfg.qk_norm and cfg.rope_dim == 128 and cfg.mask_token_id == 156895
    assert cfg.ffn_width == 8 * 1024  # k experts a token: what activation sizing counts


def test_random_moe_model_builds_every_expert():
    cfg: ModelConfig = SHAPES["tiny-moe"]
    model = random_model(cfg, torch.float32, torch.device("cpu"))
    dense, moe = model.w.layers
    assert dense.moe is None and dense.gate_up.shape == (256, 64)
    assert moe.gate_up is None and moe.moe.gate_up.shape == (8, 64, 64)
    assert moe.moe.down.shape == (8, 64, 32) and moe.moe.shared_down.shape == (64, 48)
    assert moe.q_norm.shape == (16,) and model.rotary.rot_dim == 8


def test_random_moe_engine_generates():
    engine = Engine.from_random_shape("tiny-moe", device="cpu", max_num_seqs=4, num_cache_pages=64)
    params = SamplingParams(gen_length=16, steps=8, block_length=8, stop_at_eos=False)
    engine.add_request("r", "Hello there", params)
    done = []
    while engine.has_unfinished():
        done += [u for u in engine.step() if u.finished]
    assert len(done[0].output.token_ids) == 16
    assert engine.tokens.mask not in done[0].output.token_ids


@pytest.mark.parametrize("quantization", [None, "fp8-experts"])
def test_offline_benchmark_runs_the_moe_shape(tmp_path, quantization):
    """Also its 'official' mode: the dense baseline with the official per-expert loop (bf16
    only: the official code has no FP8); and with the experts alone in FP8."""
    out = tmp_path / "offline.json"
    quant = ["--quantization", quantization] if quantization else []
    cmd = [sys.executable, str(ROOT / "benchmarks" / "offline.py"), "--shapes", "tiny-moe",
           "--device", "cpu", "--smoke", "--json", str(out), *quant]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    results = doc["results"]
    assert doc["args"]["quantization"] == quantization
    assert {r["shape"] for r in results} == {"tiny-moe"}
    sparse = [r for r in results if r["mode"].startswith("r=")]
    assert sparse and all(r["committed_tokens"] == r["batch"] * 16 for r in sparse)
    for batch in (1, 2):
        modes = {r["mode"]: r for r in results if r["batch"] == batch}
        assert modes["dense"]["committed_tokens"] > 0
        if quantization is None:
            assert modes["official"]["committed_tokens"] == modes["dense"]["committed_tokens"]
        else:
            assert "official" not in modes
    assert "x offic" in proc.stdout


def test_official_expert_loop_computes_the_engine_expert_sum():
    """The benchmark's official per-expert loop (benchmarks/official_moe.py) computes the same
    layer as the engine's experts, so the 'official' mode times the same model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from official_moe import expert_loop

    from dllmserve.models.moe import experts

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 16, generator=gen)
    gate_up, down = torch.randn(5, 24, 16, generator=gen), torch.randn(5, 16, 12, generator=gen)
    ids = torch.stack([torch.randperm(5, generator=gen)[:2] for _ in range(9)]).int()
    weights = torch.rand(9, 2, generator=gen)
    want = experts(x, gate_up, down, ids, weights)
    torch.testing.assert_close(expert_loop(x, gate_up, down, ids, weights), want)


def test_roofline_counts_the_experts_the_tokens_touch():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from roofline import Ceilings, forward_ms

    c = Ceilings(copy_tbs=3.0, bf16_tflops=700.0, fp8_tflops=1400.0)
    cfg = SHAPES["llada-moe-7b"]
    expert_bytes = 3 * 1024 * 2048 * 2
    one = forward_ms(cfg, c, 1, 1, 1)
    # one token reads 8 experts a layer; 64 tokens nearly all 64 (the weights dominate both)
    assert one * 3e9 > cfg.n_layers * 8 * expert_bytes
    assert forward_ms(cfg, c, 64, 1, 64) * 3e9 > cfg.n_layers * 60 * expert_bytes > one * 3e9


def test_roofline_counts_fp8_bytes_only_for_the_weights_stored_in_fp8():
    """ "fp8-experts" halves the routed experts' bytes only; "fp8" the dense linears' too (the
    attention, the shared expert, the dense first layer); the LM head stays bf16 in both."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from roofline import Ceilings, forward_ms

    c = Ceilings(copy_tbs=3.0, bf16_tflops=700.0, fp8_tflops=1400.0)
    cfg = SHAPES["llada2-mini"]
    moe, d, hd = cfg.moe, cfg.d_model, cfg.head_dim
    n_moe = sum(moe.moe_layers)
    dense_params = (
        cfg.n_layers * ((cfg.n_heads + 2 * cfg.n_kv_heads) * hd * d + d * cfg.n_heads * hd)
        + n_moe * 3 * moe.shared_hidden * d
        + (cfg.n_layers - n_moe) * 3 * cfg.mlp_hidden * d
    )
    times = {q: forward_ms(cfg, c, 32, 32, 32 * 544, q) for q in (None, "fp8-experts", "fp8")}
    saved_by_dense = (times["fp8-experts"] - times["fp8"]) * 3e9  # ms at 3 TB/s -> bytes
    assert abs(saved_by_dense - dense_params) < 1e-6 * dense_params  # 2 bytes -> 1 a weight
    assert times[None] > times["fp8-experts"] > times["fp8"]
