"""On a GPU: the FP8 GEMM (Hopper's FP8 tensor cores) against its CPU reference, and the engine
with FP8 weights (graphs equal eager, finished generations). Skipped without an FP8 GPU."""

from __future__ import annotations

import pytest
import torch

from dllmserve import LLM, SamplingParams, SparseConfig
from dllmserve.models.fp8 import quantize_weight
from dllmserve.models.layers import linear

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs a GPU with FP8 tensor cores",
)
# The FP8 GEMM and its reference take the same quantized operands; they differ by the bf16
# rounding of the result (2^-9 relative) and the summation order: stated tolerance 1e-2.
GPU_VS_REFERENCE = 1e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("m", [1, 32, 384])
def test_fp8_gemm_matches_its_cpu_reference(m):
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, 512, generator=gen).to(torch.bfloat16)
    w = quantize_weight((torch.randn(256, 512, generator=gen) / 8).to(torch.bfloat16))
    bias = torch.randn(256, generator=gen).to(torch.bfloat16)
    ref = linear(x, w, bias)  # CPU: quantized the same way, multiplied in fp32
    w_gpu = type(w)(w.data.cuda(), w.scale.cuda())
    got = linear(x.cuda(), w_gpu, bias.cuda())
    assert got.dtype == torch.bfloat16 and got.shape == (m, 256)
    assert _rel(got.cpu(), ref) < GPU_VS_REFERENCE


PARAMS = SamplingParams(gen_length=32, steps=32, temperature=0.5, seed=7, stop_at_eos=False)
SPARSE = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)


def _generate(path, **options):
    llm = LLM(path, device="cuda", quantization="fp8", num_cache_pages=4096, **options)
    outs = llm.generate([list(range(3, 40)), [5, 6, 7, 8]], PARAMS, [SPARSE, None],
                        use_tqdm=False)  # fmt: skip
    return llm, [o["token_ids"] for o in outs]


def test_fp8_engine_graphs_equal_eager_and_finish(llada_dir):
    llm, graphs = _generate(llada_dir)
    _, eager = _generate(llada_dir, enforce_eager=True)
    assert graphs == eager
    assert all(len(t) == 32 and llm.engine.tokens.mask not in t for t in graphs)


@pytest.mark.parametrize("quantization", ["fp8", "fp8-experts"])
def test_fp8_block_diffusion_graphs_equal_eager_and_finish(tmp_path, quantization):
    """LLaDA2 (shared expert, dense first layer) with every linear or only the routed experts in
    FP8: the fused MoE takes the norm's FP8 rows, the shared expert the kept bf16 ones."""
    from dllmserve.testing.tiny_llada2 import write_tiny_llada2

    path = write_tiny_llada2(tmp_path / "l2", seed=2, logit_scale=12.0, dtype=torch.bfloat16)
    params = SamplingParams(gen_length=16, block_length=8, steps_per_block=4, temperature=0.5,
                            seed=3, stop_at_eos=False)  # fmt: skip
    tokens = []
    for eager in (False, True):
        llm = LLM(path, device="cuda", quantization=quantization, num_cache_pages=512,
                  page_size=8, enforce_eager=eager)  # fmt: skip
        outs = llm.generate([list(range(3, 14)), [5, 6, 7, 8]], params, use_tqdm=False)
        tokens.append([o["token_ids"] for o in outs])
    assert tokens[0] == tokens[1]
    assert all(len(t) == 16 and llm.engine.tokens.mask not in t for t in tokens[0])
