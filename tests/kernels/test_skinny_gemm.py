"""The skinny-M GEMM (kernels/skinny_gemm.py) against its PyTorch reference: 16-bit, e4m3
weights with 16-bit activations, e4m3 x e4m3 with per-token scales; ragged K, split K, bias;
row results independent of the other rows; and on a GPU, against F.linear / fp8_linear and
after tuning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_testlib import ATOL, DTYPES, ON_GPU, randn

from dllmserve.kernels.skinny_gemm import (
    MAX_ROWS,
    TUNED,
    SkinnyConfig,
    bucket,
    candidates,
    skinny_linear,
    tune,
)
from dllmserve.models.fp8 import Fp8Rows, fp8_linear, quantize_weight

# small tiles: several N tiles, a ragged last K step (K = 200 over 32-wide steps), 3 K splits
CONFIGS = [SkinnyConfig(16, 32, 1, 4, 2), SkinnyConfig(16, 32, 3, 4, 2)]
N, K = 40, 200


def skinny_linear_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    x_scale: torch.Tensor | None = None,
    w_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The fp32 product of the dequantized operands, plus the bias, rounded once."""
    xf = x.float() * (x_scale.reshape(-1, 1) if x_scale is not None else 1.0)
    wf = w.float() * (w_scale.reshape(-1, 1) if w_scale is not None else 1.0)
    out = xf @ wf.t() + (bias.float() if bias is not None else 0.0)
    return out.to(out_dtype or x.dtype)


def operands(m: int, kind: str, dtype: torch.dtype, seed: int, bias: bool = False) -> tuple:
    """(x, w, bias, kwargs) of one kind: "16bit", "w8" or "w8a8"."""
    gen = torch.Generator().manual_seed(seed)
    x = randn(gen, m, K, dtype=dtype)
    w = randn(gen, N, K, dtype=torch.float32) / K**0.5
    b = randn(gen, N, dtype=dtype) if bias else None
    if kind == "16bit":
        return x, w.to(dtype), b, {}
    q = quantize_weight(w)
    kw = {"w_scale": q.scale}
    if kind == "w8a8":
        rows = Fp8Rows.of(x)
        return rows.data, q.data, b, {**kw, "x_scale": rows.scale, "out_dtype": dtype}
    return x, q.data, b, kw


@pytest.mark.parametrize("cfg", CONFIGS, ids=["one-split", "three-splits"])
@pytest.mark.parametrize("kind", ["16bit", "w8", "w8a8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 7, 32, 64])
def test_matches_reference(m, dtype, kind, cfg):
    x, w, b, kw = operands(m, kind, dtype, seed=m, bias=m == 7)
    out = skinny_linear(x, w, b, config=cfg, **kw)
    assert out.shape == (m, N) and out.dtype == dtype
    ref = skinny_linear_reference(x, w, b, **kw)
    # Hopper's e4m3 MMA accumulates with fewer bits than fp32: near-zero outputs of the w8a8
    # kind were measured 7e-5 off the fp32 reference on an H100 (outputs are of order 1)
    atol = 5e-4 if kind == "w8a8" and x.is_cuda else 2 * ATOL[dtype]
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-2)


@pytest.mark.parametrize("kind", ["16bit", "w8a8"])
def test_rows_do_not_depend_on_the_other_rows(kind):
    """Within a bucket, a row's bits are the same whatever rows come with it, and the split
    sums are added in a fixed order (repeated calls agree bit for bit)."""
    dtype = DTYPES[0]
    x, w, _, kw = operands(32, kind, dtype, seed=3)
    cfg = CONFIGS[1]
    full = skinny_linear(x, w, config=cfg, **kw)
    part_kw = {k: (v[:20] if k == "x_scale" else v) for k, v in kw.items()}
    part = skinny_linear(x[:20], w, config=cfg, **part_kw)
    assert bucket(20) == bucket(32)
    assert torch.equal(part, full[:20])
    assert torch.equal(skinny_linear(x, w, config=cfg, **kw), full)


def test_bad_operands_are_refused():
    x, w, _, _ = operands(8, "16bit", DTYPES[0], seed=1)
    with pytest.raises(ValueError, match=f"1 <= M <= {MAX_ROWS}"):
        skinny_linear(x.new_zeros(MAX_ROWS + 1, K), w)
    with pytest.raises(ValueError, match="w must be"):
        skinny_linear(x, w[:, :-1])
    q = quantize_weight(w.float())
    with pytest.raises(ValueError, match="w_scale goes with"):
        skinny_linear(x, q.data)
    with pytest.raises(ValueError, match="bias must be"):
        skinny_linear(x, w, w.new_zeros(N + 1))


@pytest.mark.parametrize("fp8_w", [False, True])
@pytest.mark.parametrize("n,k", [(4096, 4096), (24576, 4096), (3584, 18944), (64, 64)])
def test_tuning_candidates_fill_the_sms(n, k, fp8_w):
    """On a 132-SM card: every tile is tried; a split leaves each program at least two K
    steps and gives between 66 and 1056 programs, unless no split can (one split then)."""
    sms = 132
    cands = candidates(n, k, fp8_w, sms)
    assert len({(c.block_n, c.block_k) for c in cands}) == 5
    for c in cands:
        programs = -(-n // c.block_n) * c.split_k
        assert c.split_k == 1 or c.split_k <= -(-k // c.block_k) // 2
        assert sms // 2 <= programs <= 8 * sms or c.split_k == 1
    assert any(c.split_k > 1 for c in cands) == (k > 64)  # K = 64: one K step, nothing to split


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 32, 64])
def test_gpu_bf16_and_fp8_against_the_library_after_tuning(m):
    """bf16 against F.linear and FP8 (both kinds) against fp8_linear, with the tuned configs,
    on a shape big enough to split K (N 1024; K 4000, not a multiple of the K tiles)."""
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, 4000, generator=gen).to("cuda", torch.bfloat16)
    w = (torch.randn(1024, 4000, generator=gen) / 64).to("cuda", torch.bfloat16)
    b = torch.randn(1024, generator=gen).to("cuda", torch.bfloat16)
    cfg, ms = tune(x, w, reps=2)  # the bias does not change the choice (nor the compiles)
    assert TUNED[(bucket(m), 1024, 4000, "16bit")] == cfg and ms > 0
    torch.testing.assert_close(skinny_linear(x, w, b), F.linear(x, w, b), atol=3e-2, rtol=1e-2)
    q = quantize_weight(w)
    rows = Fp8Rows.of(x)
    want = fp8_linear(rows, q, b)
    a8 = {"x_scale": rows.scale, "w_scale": q.scale, "out_dtype": torch.bfloat16}
    tune(rows.data, q.data, reps=2, **a8)
    torch.testing.assert_close(skinny_linear(rows.data, q.data, b, **a8), want, atol=4e-2,
                               rtol=2e-2)  # fmt: skip
    w8 = skinny_linear(x, q.data, b, w_scale=q.scale)  # weight-only: x unquantized
    torch.testing.assert_close(w8, F.linear(x, q.dequantize(torch.bfloat16), b), atol=3e-2,
                               rtol=1e-2)  # fmt: skip


def test_engine_routing_follows_the_measured_choice(monkeypatch):
    """`skinny.gpu_linear` (what `layers.linear` calls off the CPU) runs the kernel for a shape
    whose measurement chose it, the library otherwise and past 64 rows; here on CPU tensors
    with the choices given, since measuring needs a GPU."""
    from dllmserve.models import skinny

    dtype = torch.float16
    x, w, _, _ = operands(7, "16bit", dtype, seed=5)
    q = quantize_weight(w.float())
    monkeypatch.setattr(skinny, "enabled", True)
    monkeypatch.setattr(skinny, "FASTER", {(16, N, K, "16bit"): True, (16, N, K, "w8a8"): True})
    torch.testing.assert_close(skinny.gpu_linear(x, w), skinny_linear_reference(x, w),
                               atol=2 * ATOL[dtype], rtol=1e-2)  # fmt: skip
    rows = Fp8Rows.of(x)
    want = skinny_linear_reference(rows.data, q.data, x_scale=rows.scale, w_scale=q.scale,
                                   out_dtype=dtype)  # fmt: skip
    got = skinny.gpu_linear(x, q)  # quantized per token, as fp8_linear does
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=2 * ATOL[dtype], rtol=1e-2)
    skinny.FASTER[(16, N, K, "16bit")] = False
    assert torch.equal(skinny.gpu_linear(x, w), F.linear(x, w))
    big = x.new_ones(MAX_ROWS + 1, K)
    assert torch.equal(skinny.gpu_linear(big, w), F.linear(big, w))  # never measured
    assert set(skinny.FASTER) == {(16, N, K, "16bit"), (16, N, K, "w8a8")}


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("quantization", [None, "fp8"])
def test_gpu_engine_with_the_kernel_chosen(llada_dir, monkeypatch, quantization):
    """The engine with `skinny_gemm` on and the kernel chosen for every shape: CUDA graphs give
    the tokens eager mode gives, and every position is decided."""
    from dllmserve import LLM, SamplingParams, SparseConfig
    from dllmserve.models import skinny

    if quantization and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs FP8 tensor cores")
    monkeypatch.setattr(skinny, "enabled", False)  # restored after: the engine sets it
    monkeypatch.setattr(skinny, "FASTER", {})
    monkeypatch.setattr(skinny, "_measure", lambda *a: True)
    params = SamplingParams(gen_length=32, steps=32, temperature=0.5, seed=7, stop_at_eos=False)
    sparse = SparseConfig(retention_ratio=0.5, delay_step=1, default_block_len=8)

    def generate(**kw):
        llm = LLM(llada_dir, device="cuda", dtype=torch.bfloat16, num_cache_pages=4096,
                  quantization=quantization, skinny_gemm=True, **kw)  # fmt: skip
        outs = llm.generate([list(range(3, 40)), [5, 6, 7]], params, [sparse, None],
                            use_tqdm=False)  # fmt: skip
        return llm, [o["token_ids"] for o in outs]

    llm, graphs = generate()
    assert skinny.enabled and any(skinny.FASTER.values())
    _, eager = generate(enforce_eager=True)
    assert graphs == eager
    assert all(len(t) == 32 and llm.engine.tokens.mask not in t for t in graphs)
