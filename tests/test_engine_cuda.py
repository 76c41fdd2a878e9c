"""On a GPU: the engine gives the same tokens with Triton kernels, reference kernels and
CUDA graphs (tiny fp32 model, so rounding cannot hide a wrong kernel). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import dllmserve.kernels as kernels
import dllmserve.models.layers as layers
from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.engine.upload import upload

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [list(range(3, 40)), [5, 6, 7, 8], list(range(50, 120))]
CONFIGS = [
    SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8),
    None,
    SparseConfig(retention_ratio=0.3, delay_step=0, default_block_len=8, head_select=False),
]
PARAMS = SamplingParams(gen_length=32, steps=32, temperature=0.5, seed=7, stop_at_eos=False)


def generate(path, **kw):
    llm = LLM(path, device="cuda", dtype=torch.float32, num_cache_pages=4096, **kw)
    return [o["token_ids"] for o in llm.generate(PROMPTS, PARAMS, CONFIGS, use_tqdm=False)]


def test_triton_equals_reference(llada_dir, monkeypatch):
    triton_tokens = generate(llada_dir, enforce_eager=True)
    for name in ("varlen_attention", "reuse_attention", "select_and_store"):
        monkeypatch.setattr(kernels, name, getattr(kernels.reference, name))
    monkeypatch.setattr(layers, "use_fused_kernels", False)
    assert generate(llada_dir, enforce_eager=True) == triton_tokens


def test_cuda_graphs_equal_eager(llada_dir, dream_dir):
    for path in (llada_dir, dream_dir):
        assert generate(path) == generate(path, enforce_eager=True)


def test_uniform_batch_uses_graphs(llada_dir):
    llm = LLM(llada_dir, device="cuda", dtype=torch.float32, num_cache_pages=4096)
    sparse = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)
    llm.generate([[1, 2, 3]] * 4, PARAMS, sparse, use_tqdm=False)
    assert llm.engine.graphs is not None and llm.engine.graphs.graphs


def test_upload_round_trips_every_dtype():
    host = {
        "i32": torch.tensor([[1, -2], [3, 2**31 - 1]], dtype=torch.int32),
        "i64": torch.arange(5) * (2**40),
        "mask": torch.tensor([True, False, True]),
        "f32": torch.tensor([float("nan"), 0.1, 1.0]),
        "f64": torch.tensor([0.3, 1e-300], dtype=torch.float64),
        "bf16": torch.tensor([0.1, 3.7], dtype=torch.bfloat16),
        "empty": torch.zeros((0, 4), dtype=torch.int32),
    }
    dev = upload(host, torch.device("cuda"))
    for name, t in host.items():
        got = dev[name]
        assert got.is_cuda and got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got.cpu().nan_to_num(), t.nan_to_num()), name
