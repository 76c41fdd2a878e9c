"""Fused elementwise kernels against the PyTorch formulation of dllmserve.models.layers."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import ATOL, DEVICE, DTYPES, ON_GPU, randn

import dllmserve.models.layers as layers
from dllmserve.kernels import elementwise, quantize_rows
from dllmserve.models.fp8 import Fp8Rows


@pytest.fixture(autouse=True)
def _reference_layers(monkeypatch):
    monkeypatch.setattr(layers, "use_fused_kernels", False)  # layers.* = the PyTorch reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,d", [(1, 64), (7, 96), (33, 256)])
def test_rms_norm_and_residual_add(dtype, rows, d):
    g = torch.Generator().manual_seed(rows * d)
    x, a = randn(g, rows, d, dtype=dtype), randn(g, rows, d, dtype=dtype)
    w = 1 + 0.1 * randn(g, d, dtype=dtype)
    tol = ATOL[dtype] * 4
    torch.testing.assert_close(elementwise.rms_norm(x, w, 1e-5), layers.rms_norm(x, w, 1e-5),
                               atol=tol, rtol=tol)  # fmt: skip
    x_new, h = elementwise.add_rms_norm(x, a, w, 1e-6)
    want_x, want_h = layers.add_rms_norm(x, a, w, 1e-6)
    assert torch.equal(x_new, want_x)  # the residual add rounds exactly as PyTorch does
    torch.testing.assert_close(h, want_h, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quantize", [False, True])
def test_residual_add_of_two_addends_rounds_their_sum_first(dtype, quantize):
    """An MoE layer's routed and shared outputs, summed in the residual add's launch: x +
    (routed + shared) with the inner sum rounded to the model dtype, bit for bit the two adds
    PyTorch would run (a kernel adding all three in fp32 would differ)."""
    g = torch.Generator().manual_seed(11)
    x, a, b = (randn(g, 13, 192, dtype=dtype) * s for s in (1.0, 3.0, 3.0))
    w = 1 + 0.1 * randn(g, 192, dtype=dtype)
    x_new, h = elementwise.add_rms_norm(x, a, w, 1e-6, quantize, second=b)
    want_x, want_h = layers.add_rms_norm(x, a + b, w, 1e-6)
    assert torch.equal(x_new, want_x)
    assert torch.equal(layers.add_rms_norm(x, a, w, 1e-6, second=b)[0], want_x)  # the reference
    if dtype != torch.float32:
        unrounded = (x.float() + a.float() + b.float()).to(dtype)
        assert not torch.equal(want_x, unrounded)  # the inner rounding is observable here
    if quantize:
        _same_rows(h, elementwise.add_rms_norm(x, a + b, w, 1e-6)[1])
    else:
        torch.testing.assert_close(h, want_h, atol=ATOL[dtype] * 4, rtol=ATOL[dtype] * 4)
        assert torch.equal(h, elementwise.add_rms_norm(x, a + b, w, 1e-6)[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_fp32", [True, False])
@pytest.mark.parametrize("nh,nkv,hd", [(4, 4, 16), (7, 1, 64), (2, 1, 128)])
def test_rope_on_fused_qkv_columns(dtype, in_fp32, nh, nkv, hd):
    g = torch.Generator().manual_seed(nh * hd)
    T = 19
    qkv = randn(g, T, (nh + 2 * nkv) * hd, dtype=dtype)
    positions = torch.randint(0, 500, (T,), generator=g).to(DEVICE)
    rot = layers.Rotary(hd, 10000.0, 512, DEVICE, in_fp32)
    want_q, want_k = rot.qk(qkv, nh, nkv, positions)
    qk = elementwise.rope_heads(qkv, nh + nkv, hd, positions, rot.cos, rot.sin, in_fp32)
    tol = ATOL[dtype] * 4
    torch.testing.assert_close(qk[:, :nh], want_q, atol=tol, rtol=tol)
    torch.testing.assert_close(qk[:, nh:], want_k, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_fp32", [True, False])
@pytest.mark.parametrize("normed", [True, False])
@pytest.mark.parametrize("nh,nkv,hd,rot", [(4, 2, 16, 8), (16, 4, 128, 64), (3, 1, 64, 48)])
def test_qk_norm_and_partial_rope_in_one_launch(dtype, in_fp32, normed, nh, nkv, hd, rot):
    """LLaDA-MoE's and LLaDA2's attention inputs: the per-head RMSNorm of q and k (each its own
    weight), then RoPE over the first `rot` dims, against the unfused PyTorch path."""
    g = torch.Generator().manual_seed(nh * hd + rot)
    T = 5
    qkv = randn(g, T, (nh + 2 * nkv) * hd, dtype=dtype) * 3
    positions = torch.randint(0, 500, (T,), generator=g).to(DEVICE)
    rotary = layers.Rotary(hd, 10000.0, 512, DEVICE, in_fp32, rot)
    norms = (1 + 0.1 * randn(g, hd, dtype=dtype), 1 + 0.1 * randn(g, hd, dtype=dtype), 1e-6)
    norms = norms if normed else None
    want_q, want_k = rotary.qk(qkv, nh, nkv, positions, norms)
    heads = (*norms[:2], nh, norms[2]) if normed else None
    qk = elementwise.rope_heads(
        qkv, nh + nkv, hd, positions, rotary.cos, rotary.sin, in_fp32, heads
    )
    if not normed and not ON_GPU:  # the same rounding steps: bit-exact
        assert torch.equal(qk[:, :nh], want_q) and torch.equal(qk[:, nh:], want_k)
    # the norm's fp32 sum of squares adds in another order (and the GPU's reference rounds its
    # own way): the rms_norm kernel's tolerance
    tol = ATOL[dtype] * 4
    torch.testing.assert_close(qk[:, :nh], want_q, atol=tol, rtol=tol)
    torch.testing.assert_close(qk[:, nh:], want_k, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normed", [True, False])
@pytest.mark.parametrize("nh,nkv,hd,rot,heads", [(4, 2, 16, 8, None), (8, 2, 32, 32, 2),
                                                 (3, 1, 64, 48, None)])  # fmt: skip
def test_rope_writes_the_k_v_cache_entries_in_the_same_launch(dtype, normed, nh, nkv, hd, rot,
                                                              heads):  # fmt: skip
    """A block-diffusion lane's K/V page write inside the RoPE launch: q and k as without it,
    and the pools as `layers.store_kv` of that k and the v columns leaves them (rows at their
    entries, every other entry untouched), the last tile running past the heads too."""
    g = torch.Generator().manual_seed(nh * hd + rot)
    T, pages, page = 7, 5, 4
    qkv = randn(g, T, (nh + 2 * nkv) * hd, dtype=dtype) * 3
    positions = torch.randint(0, 500, (T,), generator=g).to(DEVICE)
    rotary = layers.Rotary(hd, 10000.0, 512, DEVICE, True, rot)
    norms = (1 + 0.1 * randn(g, hd, dtype=dtype), 1 + 0.1 * randn(g, hd, dtype=dtype), nh, 1e-6)
    norms = norms if normed else None
    slots = torch.randperm(pages * page, generator=g)[:T].to(DEVICE)
    before = [randn(g, pages, page, nkv, hd, dtype=dtype) for _ in range(2)]
    got = [t.clone() for t in before]
    args = (qkv, nh + nkv, hd, positions, rotary.cos, rotary.sin, True, norms)
    qk = elementwise.rope_heads(*args, heads_per_program=heads, store=(*got, slots, nh))
    plain = elementwise.rope_heads(*args, heads_per_program=heads)
    assert torch.equal(qk, plain)
    want = [t.clone() for t in before]
    v = qkv[:, (nh + nkv) * hd :].reshape(T, nkv, hd)
    layers.store_kv(plain[:, nh:], v, (*want, slots))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_rotary_qk_writes_the_same_entries_on_both_paths(monkeypatch):
    """`Rotary.qk(..., store)`: the fused launch (interpreter) and the CPU path (RoPE, then
    `layers.store_kv`) leave the same pools."""
    monkeypatch.setattr(layers, "_fused", lambda x: layers.use_fused_kernels)  # CPU tensors too
    g = torch.Generator().manual_seed(3)
    nh, nkv, hd, T = 4, 2, 16, 6
    qkv = randn(g, T, (nh + 2 * nkv) * hd, dtype=torch.float32)
    positions = torch.randint(0, 500, (T,), generator=g).to(DEVICE)
    rotary = layers.Rotary(hd, 10000.0, 512, DEVICE, True, 8)
    slots = torch.tensor([9, 0, 4, 13, 2, 7], device=DEVICE)
    pools = {}
    for fused in (True, False):
        pools[fused] = [torch.zeros(4, 4, nkv, hd, device=DEVICE) for _ in range(2)]
        layers.use_fused_kernels = fused
        try:
            rotary.qk(qkv, nh, nkv, positions, None, (*pools[fused], slots))
        finally:
            layers.use_fused_kernels = False
    for a, b in zip(pools[True], pools[False], strict=True):
        torch.testing.assert_close(a, b, atol=ATOL[torch.float32] * 4, rtol=1e-5)
        assert a.view(-1, nkv, hd)[slots].abs().sum() > 0  # the rows' entries written


@pytest.mark.parametrize("normed", [True, False])
def test_rope_tiling_does_not_change_results(normed):
    """Heads per program (6 heads: the last program's tile runs past them) only tiles the
    work: each head's result is the same bits, except that on a GPU the QK norm's sum of
    squares may add in another order for another tile shape (seen on an H100): there, the
    norm kernel's tolerance. A model's tiling is fixed by its head count and size."""
    g = torch.Generator().manual_seed(6)
    nh, nkv, hd, T = 4, 2, 16, 3
    qkv = randn(g, T, (nh + 2 * nkv) * hd, dtype=torch.float32)
    positions = torch.randint(0, 500, (T,), generator=g).to(DEVICE)
    rotary = layers.Rotary(hd, 10000.0, 512, DEVICE, False, 8)
    norms = (randn(g, hd, dtype=torch.float32), randn(g, hd, dtype=torch.float32), nh, 1e-6)
    args = (qkv, nh + nkv, hd, positions, rotary.cos, rotary.sin, False, norms if normed else None)
    want = elementwise.rope_heads(*args, heads_per_program=1)
    for heads in (2, 4, 8):
        got = elementwise.rope_heads(*args, heads_per_program=heads)
        if normed and got.is_cuda:
            tol = ATOL[torch.float32] * 4
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        else:
            assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,m", [(1, 48), (5, 1500)])
def test_silu_mul(dtype, rows, m):
    g = torch.Generator().manual_seed(m)
    gu = randn(g, rows, 2 * m, dtype=dtype) * 3
    tol = ATOL[dtype] * 4
    torch.testing.assert_close(elementwise.silu_mul(gu), layers.silu_mul(gu), atol=tol, rtol=tol)


def test_empty_batches():
    x = torch.zeros(0, 64, device=DEVICE)
    w = torch.ones(64, device=DEVICE)
    assert elementwise.rms_norm(x, w, 1e-5).shape == (0, 64)
    assert elementwise.silu_mul(torch.zeros(0, 32, device=DEVICE)).shape == (0, 16)


def _same_rows(got: tuple[torch.Tensor, torch.Tensor], of: torch.Tensor) -> None:
    """A quantizing launch wrote exactly what quantize_rows makes of the unquantized output."""
    q, scale = got
    want_q, want_scale = quantize_rows(of)
    assert q.dtype == torch.float8_e4m3fn and q.shape == of.shape and scale.shape == (len(of), 1)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))
    assert torch.equal(scale, want_scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,d", [(1, 64), (9, 200)])
def test_norms_quantize_their_rows_in_the_same_launch(dtype, rows, d):
    g = torch.Generator().manual_seed(rows + d)
    x, a = randn(g, rows, d, dtype=dtype), randn(g, rows, d, dtype=dtype)
    w = 1 + 0.1 * randn(g, d, dtype=dtype)
    _same_rows(elementwise.rms_norm(x, w, 1e-5, quantize=True), elementwise.rms_norm(x, w, 1e-5))
    x_new, h = elementwise.add_rms_norm(x, a, w, 1e-6)
    x_quant, rows_q = elementwise.add_rms_norm(x, a, w, 1e-6, quantize=True)
    assert torch.equal(x_quant, x_new)
    _same_rows(rows_q, h)
    x_kept, (q, scale, kept) = elementwise.add_rms_norm(x, a, w, 1e-6, quantize=True, keep=True)
    assert torch.equal(x_kept, x_new) and torch.equal(kept, h)  # the MoE router's rows
    _same_rows((q, scale), h)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,m", [(1, 48), (3, 2500)])  # one tile; several tiles per row
def test_silu_mul_quantizes_its_rows_in_the_same_launch(dtype, rows, m):
    g = torch.Generator().manual_seed(m)
    gu = randn(g, rows, 2 * m, dtype=dtype) * 3
    _same_rows(elementwise.silu_mul(gu, quantize=True), elementwise.silu_mul(gu))


def test_layers_hand_fp8_rows_to_the_gemm_on_the_cpu_too():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 64, generator=g)
    w = torch.ones(64)
    rows = layers.rms_norm(x, w, 1e-5, quantize=True)
    assert isinstance(rows, Fp8Rows) and rows.dtype == torch.float32
    want = Fp8Rows.of(layers.rms_norm(x, w, 1e-5))
    assert torch.equal(rows.data.view(torch.uint8), want.data.view(torch.uint8))
    assert torch.equal(rows.scale, want.scale)
    _, kept = layers.add_rms_norm(x, x, w, 1e-5, quantize=True, keep=True)
    _, plain = layers.add_rms_norm(x, x, w, 1e-5)
    assert torch.equal(kept.values, plain) and kept.values.dtype == torch.float32
    assert torch.equal(kept.data.view(torch.uint8), Fp8Rows.of(plain).data.view(torch.uint8))


@pytest.mark.parametrize("shape", ["tiny", "tiny-moe", "tiny-llada2"])
def test_model_forward_on_the_fused_kernels(monkeypatch, shape):
    """The whole forward of the dense, LLaDA-MoE-like (q/k norm, partial RoPE) and LLaDA2-like
    tiny shapes with every fused kernel of the layers (the interpreter on the CPU) equals the
    PyTorch path: the kernels are wired where the model uses them."""
    from dllmserve.kernels import reference
    from dllmserve.models.shapes import SHAPES, random_model

    def attention(layer, q, k, v):
        cu = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=DEVICE)
        return reference.varlen_attention(q, k, v, cu, q.shape[0], q.shape[-1] ** -0.5)

    cfg = SHAPES[shape]
    pools = []  # each forward's K/V written with RoPE (a block-diffusion lane's, `kv_target`)

    def kv_target(layer):
        if layer == 0:
            shape = (3, 4, cfg.n_kv_heads, cfg.head_dim)
            pools.append([torch.zeros(shape, device=DEVICE) for _ in range(2)])
        return (*pools[-1], torch.arange(11, device=DEVICE) + layer % 2)

    attention.select = lambda *args: None
    attention.kv_target = kv_target
    torch.manual_seed(0)
    model = random_model(cfg, torch.float32, DEVICE)
    ids, positions = torch.randint(0, 250, (11,), device=DEVICE), torch.arange(11, device=DEVICE)
    want = model.forward(ids, positions, attention)
    monkeypatch.setattr(layers, "use_fused_kernels", True)
    monkeypatch.setattr(layers, "_fused", lambda x: layers.use_fused_kernels)  # CPU tensors too
    got = model.forward(ids, positions, attention)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for fused, plain in zip(pools[1], pools[0], strict=True):
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
        assert plain.abs().sum() > 0
