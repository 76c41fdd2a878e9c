"""FP8 linear layers: weight quantization and the FP8 GEMM against their references.

On the CPU the FP8 path is simulated (quantize, dequantize, multiply in fp32), which is the
reference the GPU's FP8 tensor-core GEMM is checked against in tests/test_engine_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

from dllmserve.errors import ValidationError
from dllmserve.models.fp8 import Fp8Weight, quantize_weight
from dllmserve.models.layers import linear
from dllmserve.models.loader import load_model

# Relative error of an FP8 (e4m3, per-channel / per-token scales) product against the exact one,
# on Gaussian data: each operand element is off by up to 2^-4 (about 2 % RMS), so the product
# is off by about 3 % RMS. The stated tolerance for the FP8 path:
FP8_REL_TOL = 0.06


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_quantize_weight_scales_each_output_channel():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    w[5] *= 100.0  # one loud channel must not cost the others their precision
    q = quantize_weight(w)
    assert isinstance(q, Fp8Weight) and q.data.dtype == torch.float8_e4m3fn
    assert q.data.shape == (48, 64) and q.scale.shape == (1, 48)
    assert q.data.float().abs().amax(dim=1).eq(448.0).all()
    for row in range(48):
        assert _rel(q.dequantize()[row], w[row]) < 0.04


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_close_to_exact_product(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 256, generator=gen).to(dtype)
    w = torch.randn(96, 256, generator=gen) / 16
    b = torch.randn(96, generator=gen).to(dtype)
    out = linear(x, quantize_weight(w.to(dtype)), b)
    assert out.dtype == dtype and out.shape == (40, 96)
    exact = x.double() @ w.double().T + b.double()
    assert _rel(out, exact) < FP8_REL_TOL


def test_fp8_linear_rows_do_not_depend_on_their_batch():
    """Per-token scales: a row's result is the same alone and among other rows."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(37, 128, generator=gen)
    w = quantize_weight(torch.randn(64, 128, generator=gen))
    together = linear(x, w)
    for i in (0, 17, 36):
        assert torch.equal(linear(x[i : i + 1] * 1.0, w)[0], together[i])


def test_load_model_quantizes_linear_layers_only(llada_dir):
    model = load_model(llada_dir, torch.float32, torch.device("cpu"), quantization="fp8")
    for lw in model.w.layers:
        assert all(isinstance(t, Fp8Weight) for t in (lw.qkv, lw.o, lw.gate_up, lw.down))
        assert lw.attn_norm.dtype == torch.float32
    assert model.w.lm_head.dtype == torch.float32 and model.w.embed.dtype == torch.float32


def test_unknown_quantization_is_named(llada_dir):
    with pytest.raises(ValidationError, match="quantization: must be one of \\['fp8', 'fp8-exp"):
        load_model(llada_dir, torch.float32, torch.device("cpu"), quantization="int4")


def test_fp8_experts_on_a_dense_model_is_refused_before_any_weight_is_read(llada_dir, tmp_path):
    """The check runs on config.json alone: a checkpoint without its weights is refused the same."""
    import shutil

    from dllmserve.models.shapes import SHAPES, random_model

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(llada_dir / "config.json", bare / "config.json")
    match = "quantization: 'fp8-experts' needs a mixture-of-experts model"
    for build in (
        lambda: load_model(bare, torch.float32, torch.device("cpu"), quantization="fp8-experts"),
        lambda: random_model(
            SHAPES["tiny"], torch.float32, torch.device("cpu"), quantization="fp8-experts"
        ),
    ):
        with pytest.raises(ValidationError, match=match):
            build()


def test_engine_option_is_checked_and_named():
    from dllmserve.engine.config import EngineConfig

    assert EngineConfig(quantization="fp8").quantization == "fp8"
    assert EngineConfig(quantization="fp8-experts").quantization == "fp8-experts"
    with pytest.raises(ValidationError, match="quantization: must be one of .* got 'int8'"):
        EngineConfig(quantization="int8")


def test_fp8_greedy_tokens_agree_with_the_unquantized_model_on_the_shipped_model():
    """The acceptance bar of the FP8 option: on the shipped model's held-out tasks (copying,
    addition, lookups in 128 tokens; four of each, to stay cheap on a CPU), >= 95 % of the
    generated positions equal those of the
    unquantized model, and the exact-match accuracy within one answer of it. (fp32 here: bf16
    matmuls are slow on a CPU; benchmarks/fp8_accuracy.py measures bf16 on the GPU.)"""
    from dllmserve import LLM, SamplingParams
    from dllmserve.assets import default_model_path, tasks

    examples = tasks.held_out("copy", 4) + tasks.held_out("add", 4)
    examples += tasks.held_out("recall", 4, 128)
    prompts = [tasks.chat_prompt(e.question) for e in examples]
    params = SamplingParams(gen_length=32, steps=32, block_length=32)
    outs = {}
    for name, options in (("exact", {}), ("fp8", {"quantization": "fp8"})):
        llm = LLM(default_model_path(), device="cpu", **options)
        outs[name] = llm.generate(prompts, params, use_tqdm=False)
    pairs = list(zip(outs["exact"], outs["fp8"], strict=True))
    same = sum(
        a == b for o, f in pairs for a, b in zip(o["token_ids"], f["token_ids"], strict=True)
    )
    assert same / (32 * len(examples)) >= 0.95
    right = {
        name: sum(tasks.is_correct(e, o["text"]) for e, o in zip(examples, got, strict=True))
        for name, got in outs.items()
    }
    assert abs(right["fp8"] - right["exact"]) <= 1
