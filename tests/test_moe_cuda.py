"""On a GPU: an LLaDA-MoE engine gives the same tokens with CUDA graphs as eager, with the
fused MoE kernel as with the CPU's per-expert loop run on the GPU, and with FP8 experts it
generates; on a tiny fp32 model so rounding cannot hide a wrong kernel. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import dllmserve.models.moe as moe
from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.testing.tiny_models import write_tiny_llada_moe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [list(range(3, 40)), [5, 6, 7, 8], list(range(50, 120))]
CONFIGS = [
    SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8),
    None,
    SparseConfig(retention_ratio=0.3, delay_step=0, default_block_len=8, head_select=False),
]
PARAMS = SamplingParams(gen_length=32, steps=32, temperature=0.5, seed=7, stop_at_eos=False)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-moe")
    return write_tiny_llada_moe(path, moe_layer_freq=[0, 1, 1], n_layers=3, n_kv_heads=2,
                                partial_rotary_factor=0.5, expert_bias=True)  # fmt: skip


def generate(path, prompts=PROMPTS, configs=CONFIGS, dtype=torch.float32, **kw):
    llm = LLM(path, device="cuda", dtype=dtype, num_cache_pages=4096, **kw)
    return [o["token_ids"] for o in llm.generate(prompts, PARAMS, configs, use_tqdm=False)]


def test_cuda_graphs_equal_eager(moe_dir):
    assert generate(moe_dir) == generate(moe_dir, enforce_eager=True)


def test_fused_kernel_equals_the_expert_loop(moe_dir, monkeypatch):
    fused = generate(moe_dir, enforce_eager=True)
    monkeypatch.setattr(moe, "experts", moe._experts_loop)
    assert generate(moe_dir, enforce_eager=True) == fused


def test_bf16_and_fp8_experts_generate(moe_dir):
    for quantization in (None, "fp8"):
        out = generate(moe_dir, dtype=torch.bfloat16, quantization=quantization)
        assert [len(t) for t in out] == [32, 32, 32]
