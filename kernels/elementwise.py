"""Fused elementwise kernels of the transformer layer: RMSNorm (with the residual add), RoPE on
q and k together (with their per-head RMSNorm where the model has one), and SiLU-gate times up.

Unfused, each is five to ten tiny PyTorch kernels per layer; at batch 1 those ~40 launches a
layer cost as much GPU time as the layer's GEMMs. Each kernel keeps the rounding steps of the
PyTorch formulation in `dllmserve.models.layers` (fp32 math, rounding to the model dtype where
PyTorch rounds), so results agree to the last bit or within one rounding of the model dtype.
References: ``rms_norm``, ``add_rms_norm``, ``Rotary`` and ``silu_mul`` of that module.

With FP8 weights (docs/design.md §14) the norms and SiLU-mul that feed a GEMM also quantize
their rows to e4m3 (`quantize=True`): the value they would have stored, rounded to the model
dtype, then exactly what `fp8_quant.quantize_rows` would make of it, in the same launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8_quant import quantize, row_scale
from .reference import E4M3_MAX, FP8_MIN_SCALE


def _quantized_outputs(rows: int, cols: int, device: torch.device):
    """Buffers of a quantizing launch: e4m3 [rows, cols] and fp32 scales [rows, 1]."""
    q = torch.empty((rows, cols), dtype=torch.float8_e4m3fn, device=device)
    return q, torch.empty((rows, 1), dtype=torch.float32, device=device)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, add_ptr, second_ptr, w_ptr, x_out_ptr, h_ptr, s_ptr, kept_ptr, D, eps,
    HAS_ADD: tl.constexpr, HAS_SECOND: tl.constexpr, QUANT: tl.constexpr, KEEP: tl.constexpr,
    E4M3_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0)
    if HAS_ADD:
        a = tl.load(add_ptr + row * D + cols, mask=m, other=0.0)
        if HAS_SECOND:  # add + second, rounded to the model dtype as their own sum would be
            b = tl.load(second_ptr + row * D + cols, mask=m, other=0.0)
            a = (a.to(tl.float32) + b.to(tl.float32)).to(x_ptr.dtype.element_ty)
        x = (x.to(tl.float32) + a.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_out_ptr + row * D + cols, x, mask=m)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
    y = (xf * rstd).to(x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=m, other=0.0)
    h = (w.to(tl.float32) * y.to(tl.float32)).to(y.dtype)
    if QUANT:  # h as FP8 rows: the scale from the rounded values, as quantize_rows would
        hf = h.to(tl.float32)
        scale = row_scale(tl.max(tl.abs(hf), axis=0), E4M3_MAX, MIN_SCALE)
        tl.store(h_ptr + row * D + cols, quantize(hf, scale, E4M3_MAX), mask=m)
        tl.store(s_ptr + row, scale)
        if KEEP:  # the unquantized rows too (an MoE router reads them)
            tl.store(kept_ptr + row * D + cols, h, mask=m)
    else:
        tl.store(h_ptr + row * D + cols, h, mask=m)


def _norm_launch(x, add, weight, eps, quantize: bool, keep: bool = False, second=None):
    """(x + add (+ second) or None, h or (q, scales), or (q, scales, h) with `keep`) of one
    fused launch over x's rows."""
    T, D = x.shape
    x_out = torch.empty_like(x) if add is not None else None
    h, scales = _quantized_outputs(T, D, x.device) if quantize else (torch.empty_like(x), x)
    kept = torch.empty_like(x) if quantize and keep else None
    if T:
        _add_rms_norm_kernel[(T,)](
            x, x if add is None else add, x if second is None else second, weight,
            x if x_out is None else x_out, h, scales, x if kept is None else kept, D, eps,
            HAS_ADD=add is not None, HAS_SECOND=second is not None, QUANT=quantize,
            KEEP=kept is not None, E4M3_MAX=E4M3_MAX, MIN_SCALE=FP8_MIN_SCALE,
            BLOCK=triton.next_power_of_2(D),
        )  # fmt: skip
    if not quantize:
        return x_out, h
    return x_out, (h, scales) if kept is None else (h, scales, kept)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, quantize: bool = False):
    """weight * (x * rsqrt(mean(x^2) + eps) in fp32, cast to x's dtype); x [T, D] contiguous.
    With `quantize`, (e4m3 rows, fp32 scales [T, 1]) instead."""
    assert x.dim() == 2 and x.is_contiguous() and weight.shape == (x.shape[1],)
    return _norm_launch(x, None, weight, eps, quantize)[1]


def add_rms_norm(
    x: torch.Tensor,
    add: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    quantize: bool = False,
    keep: bool = False,
    second: torch.Tensor | None = None,
):
    """(x + add, rms_norm(x + add)): the residual update and the next sublayer's input (as
    e4m3 rows and scales with `quantize`; with `keep` too, the rows in x's dtype after them).
    `second`: added to `add` first, their sum rounded (an MoE layer's routed + shared)."""
    assert x.dim() == 2 and x.is_contiguous() and add.is_contiguous() and add.shape == x.shape
    assert second is None or (second.is_contiguous() and second.shape == x.shape)
    assert weight.shape == (x.shape[1],)
    return _norm_launch(x, add, weight, eps, quantize, keep, second)


@triton.jit
def _rope_kernel(
    src_ptr, src_row_stride, pos_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, out_ptr, n_heads,
    n_q_heads, eps, k_pool, v_pool, slots_ptr, HEAD_DIM: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr, REST: tl.constexpr, BLOCK_REST: tl.constexpr, HEADS: tl.constexpr,
    NORM: tl.constexpr, IN_FP32: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    """HEADS heads of one row, each [x1 | x2 | rest]: x1, x2 the rotated halves (HALF each),
    `rest` the REST unrotated dims of a partial rotary; NORM first applies the per-head RMSNorm
    (q's weight for the first n_q_heads heads, k's after). STORE: the k heads' results and the
    v heads after them in src (as many) also go to entry slots[row] of the K/V pools."""
    row = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
    d = tl.arange(0, BLOCK_HALF)
    r = tl.arange(0, BLOCK_REST)
    mh = (heads < n_heads)[:, None]
    m1 = mh & (d < HALF)[None, :]
    mr = mh & (r < REST)[None, :]
    pos = tl.load(pos_ptr + row)
    base = src_ptr + row * src_row_stride + heads[:, None] * HEAD_DIM
    x1 = tl.load(base + d[None, :], mask=m1, other=0.0)
    x2 = tl.load(base + HALF + d[None, :], mask=m1, other=0.0)
    xr = tl.load(base + 2 * HALF + r[None, :], mask=mr, other=0.0)
    dt = out_ptr.dtype.element_ty
    if NORM:  # rms_norm of each head: fp32 statistics, rounded, then the weight, rounded
        x1f, x2f, xrf = x1.to(tl.float32), x2.to(tl.float32), xr.to(tl.float32)
        ss = tl.sum(x1f * x1f, axis=1) + tl.sum(x2f * x2f, axis=1) + tl.sum(xrf * xrf, axis=1)
        rstd = (1.0 / tl.sqrt(ss / HEAD_DIM + eps))[:, None]
        is_k = (heads >= n_q_heads)[:, None]
        w1 = _qk_weight(qw_ptr, kw_ptr, d, HALF, is_k)
        w2 = _qk_weight(qw_ptr + HALF, kw_ptr + HALF, d, HALF, is_k)
        wr = _qk_weight(qw_ptr + 2 * HALF, kw_ptr + 2 * HALF, r, REST, is_k)
        x1 = (w1.to(tl.float32) * (x1f * rstd).to(dt).to(tl.float32)).to(dt)
        x2 = (w2.to(tl.float32) * (x2f * rstd).to(dt).to(tl.float32)).to(dt)
        xr = (wr.to(tl.float32) * (xrf * rstd).to(dt).to(tl.float32)).to(dt)
    md = d < HALF
    c1 = tl.load(cos_ptr + pos * 2 * HALF + d, mask=md)[None, :]  # cat(freqs, freqs)
    s1 = tl.load(sin_ptr + pos * 2 * HALF + d, mask=md)[None, :]
    c2 = tl.load(cos_ptr + pos * 2 * HALF + HALF + d, mask=md)[None, :]
    s2 = tl.load(sin_ptr + pos * 2 * HALF + HALF + d, mask=md)[None, :]
    if IN_FP32:  # LLaDA: rotate in fp32, round once
        o1 = x1.to(tl.float32) * c1 - x2.to(tl.float32) * s1
        o2 = x2.to(tl.float32) * c2 + x1.to(tl.float32) * s2
    else:  # Dream: cos/sin rounded to the model dtype, each product and the sum rounded
        c1, s1, c2, s2 = c1.to(dt), s1.to(dt), c2.to(dt), s2.to(dt)
        o1 = (x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)
        o2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    o1, o2, xr = o1.to(dt), o2.to(dt), xr.to(dt)
    out = out_ptr + (row * n_heads + heads[:, None]) * HEAD_DIM
    _store_head(out, o1, o2, xr, d, r, m1, mr, HALF)
    if STORE:  # the block lanes' K/V into their cache entry, v copied from its columns
        n_kv = n_heads - n_q_heads
        kv = (heads - n_q_heads)[:, None]
        is_k = (heads >= n_q_heads)[:, None]
        entry = tl.load(slots_ptr + row) * n_kv
        k_dst = k_pool + (entry + kv) * HEAD_DIM
        _store_head(k_dst, o1, o2, xr, d, r, m1 & is_k, mr & is_k, HALF)
        v_src = src_ptr + row * src_row_stride + (n_heads + kv) * HEAD_DIM
        v1 = tl.load(v_src + d[None, :], mask=m1 & is_k)
        v2 = tl.load(v_src + HALF + d[None, :], mask=m1 & is_k)
        vr = tl.load(v_src + 2 * HALF + r[None, :], mask=mr & is_k)
        v_dst = v_pool + (entry + kv) * HEAD_DIM
        _store_head(v_dst, v1, v2, vr, d, r, m1 & is_k, mr & is_k, HALF)


@triton.jit
def _store_head(dst, a, b, rest, d, r, m, mr, HALF: tl.constexpr):
    """A head's [x1 | x2 | rest] parts at dst (rows: heads)."""
    tl.store(dst + d[None, :], a, mask=m)
    tl.store(dst + HALF + d[None, :], b, mask=m)
    tl.store(dst + 2 * HALF + r[None, :], rest, mask=mr)


@triton.jit
def _qk_weight(qw_ptr, kw_ptr, cols, N: tl.constexpr, is_k):
    """[heads, cols] norm weights: k's on the k heads' rows, q's on the others."""
    m = cols < N
    return tl.where(
        is_k, tl.load(kw_ptr + cols, mask=m)[None, :], tl.load(qw_ptr + cols, mask=m)[None, :]
    )


def rope_heads(
    src: torch.Tensor, n_heads: int, head_dim: int, positions: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, in_fp32: bool,
    norms: tuple[torch.Tensor, torch.Tensor, int, float] | None = None,
    heads_per_program: int | None = None,
    store: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Rotate the first `n_heads` heads of each row of src [T, >= n_heads * head_dim] (rows may
    be strided, e.g. the q and k columns of a fused qkv output); returns [T, n_heads, D].
    The tables' width is the rotated dims (the rest of each head passes unrotated).
    `norms` = (q weight [D], k weight [D], number of q heads, eps): each head's RMSNorm first
    (LLaDA-MoE's and LLaDA2's q/k norm), in the same launch: the q and k columns are read once
    and written once, instead of a copy, a norm and a dozen elementwise passes each.
    `store` = (k pool, v pool [pages, page_size, Hkv, D] contiguous, slots int64 [T], number of
    q heads): the heads after the q heads are k, followed in src by as many v heads; row t's k
    (as returned) and v also go to entry slots[t] of the pools (`layers.store_kv`), in the
    same launch: the K/V page write of a block-diffusion lane.
    `heads_per_program` (a power of two; default about 1024 elements a program) is for tuning."""
    T = src.shape[0]
    assert src.dim() == 2 and src.stride(1) == 1 and src.shape[1] >= n_heads * head_dim
    rot = cos.shape[1]
    assert positions.shape == (T,) and rot % 2 == 0 and rot <= head_dim
    assert cos.is_contiguous() and sin.is_contiguous() and sin.shape == cos.shape
    out = torch.empty((T, n_heads, head_dim), dtype=src.dtype, device=src.device)
    qw, kw, n_q, eps = norms if norms is not None else (cos, cos, n_heads, 0.0)
    if norms is not None:
        assert qw.shape == kw.shape == (head_dim,) and 0 < n_q < n_heads
    k_pool, v_pool, slots, n_q_store = store if store is not None else (src, src, positions, 0)
    if store is not None:
        n_kv = n_heads - n_q_store
        assert norms is None or norms[2] == n_q_store
        assert 0 < n_q_store < n_heads and src.shape[1] >= (n_heads + n_kv) * head_dim
        for pool in (k_pool, v_pool):
            assert pool.is_contiguous() and pool.shape[2:] == (n_kv, head_dim)
            assert pool.dtype == src.dtype
        assert slots.shape == (T,) and slots.dtype == torch.int64
        n_q = n_q_store
    heads = heads_per_program or min(triton.next_power_of_2(n_heads), max(1, 1024 // head_dim))
    assert heads & (heads - 1) == 0, f"heads_per_program={heads} must be a power of two"
    if T:
        rest = head_dim - rot
        _rope_kernel[(T, triton.cdiv(n_heads, heads))](
            src, src.stride(0), positions, cos, sin, qw, kw, out, n_heads, n_q, eps,
            k_pool, v_pool, slots,
            HEAD_DIM=head_dim, HALF=rot // 2, BLOCK_HALF=triton.next_power_of_2(rot // 2),
            REST=rest, BLOCK_REST=triton.next_power_of_2(max(rest, 1)), HEADS=heads,
            NORM=norms is not None, IN_FP32=in_fp32, STORE=store is not None,
        )  # fmt: skip
    return out


@triton.jit
def _silu_mul_value(gu_ptr, row, cols, M, m, dt: tl.constexpr):
    """silu(gate) * up at `cols` of `row`, rounded to the model dtype as PyTorch rounds it."""
    g = tl.load(gu_ptr + row * 2 * M + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * 2 * M + M + cols, mask=m, other=0.0)
    s = (g / (1.0 + tl.exp(-g))).to(dt)
    return (s.to(tl.float32) * u.to(tl.float32)).to(dt)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, M, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < M
    v = _silu_mul_value(gu_ptr, row, cols, M, m, out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * M + cols, v, mask=m)


@triton.jit
def _silu_mul_quant_kernel(
    gu_ptr, q_ptr, s_ptr, M,
    DT: tl.constexpr, E4M3_MAX: tl.constexpr, MIN_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program per row: the row's amax over every column first, then (computing the values
    again, cheaper than storing them) each quantized with the row's scale."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    for start in range(0, M, BLOCK):
        m = start + offs < M
        v = _silu_mul_value(gu_ptr, row, start + offs, M, m, DT)
        amax = tl.maximum(amax, tl.abs(v.to(tl.float32)))
    scale = row_scale(tl.max(amax, axis=0), E4M3_MAX, MIN_SCALE)
    for start in range(0, M, BLOCK):
        m = start + offs < M
        v = _silu_mul_value(gu_ptr, row, start + offs, M, m, DT).to(tl.float32)
        tl.store(q_ptr + row * M + start + offs, quantize(v, scale, E4M3_MAX), mask=m)
    tl.store(s_ptr + row, scale)


_TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def silu_mul(gate_up: torch.Tensor, quantize: bool = False):
    """silu(gate) * up for gate_up [T, 2M] = [gate | up]; returns [T, M] (with `quantize`,
    (e4m3 rows [T, M], fp32 scales [T, 1]) instead)."""
    assert gate_up.dim() == 2 and gate_up.is_contiguous() and gate_up.shape[1] % 2 == 0
    T, M = gate_up.shape[0], gate_up.shape[1] // 2
    block = min(1024, triton.next_power_of_2(M))
    if quantize:
        q, scales = _quantized_outputs(T, M, gate_up.device)
        if T:
            _silu_mul_quant_kernel[(T,)](
                gate_up, q, scales, M, DT=_TL_DTYPE[gate_up.dtype], E4M3_MAX=E4M3_MAX,
                MIN_SCALE=FP8_MIN_SCALE, BLOCK=block,
            )  # fmt: skip
        return q, scales
    out = torch.empty((T, M), dtype=gate_up.dtype, device=gate_up.device)
    if T:
        _silu_mul_kernel[(T, triton.cdiv(M, block))](gate_up, out, M, BLOCK=block)
    return out
