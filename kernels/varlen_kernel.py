"""Packed (varlen) bidirectional attention for FULL/SELECT steps (flash-attention forward).

One program owns a tile of one segment's queries for one head and streams the segment's K/V
with an online softmax; only the segment's last K tile is masked, so the steady-state loop
is mask-free. Reference: ``reference.varlen_attention``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_d, dim_mask, dot_precision, rows


@triton.jit
def _tile(
    q,
    k_ptrs,
    v_ptrs,
    mask_n,
    d,
    m_i,
    l_i,
    acc,
    qk_scale,
    PREC: tl.constexpr,
    MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One online-softmax update with a [BLOCK_N, D] tile of K and V (MASKED: some keys or
    head-dim columns are padding)."""
    if MASKED:
        k = tl.load(k_ptrs, mask=dim_mask(mask_n, d, HEAD_DIM, BLOCK_D), other=0.0)
    else:
        k = tl.load(k_ptrs)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if MASKED:
        s = tl.where(mask_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(v_ptrs, mask=dim_mask(mask_n, d, HEAD_DIM, BLOCK_D), other=0.0)
    else:
        v = tl.load(v_ptrs)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _varlen_fwd(
    Q,
    K,
    V,
    Out,
    CU,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    m_tile = tl.program_id(0)
    h = tl.program_id(1)
    seg = tl.program_id(2)
    start = tl.load(CU + seg).to(tl.int64)
    n = tl.load(CU + seg + 1) - start
    if m_tile * BLOCK_M >= n:
        return
    g = h // GROUP
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    d = tl.arange(0, BLOCK_D)
    cols = tl.arange(0, BLOCK_N)
    q = tl.load(
        Q + (start + rows)[:, None] * stride_qt + h * stride_qh + d[None, :],
        mask=dim_mask(row_ok, d, HEAD_DIM, BLOCK_D),
        other=0.0,
    )
    k_ptrs = K + (start + cols)[:, None] * stride_kt + g * stride_kh + d[None, :]
    v_ptrs = V + (start + cols)[:, None] * stride_vt + g * stride_vh + d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = (n // BLOCK_N) * BLOCK_N
    for j in range(0, n_full, BLOCK_N):
        m_i, l_i, acc = _tile(
            q,
            k_ptrs + j * stride_kt,
            v_ptrs + j * stride_vt,
            cols < BLOCK_N,
            d,
            m_i,
            l_i,
            acc,
            qk_scale,
            PREC,
            BLOCK_D != HEAD_DIM,
            HEAD_DIM,
            BLOCK_D,
        )
    if n_full < n:
        m_i, l_i, acc = _tile(
            q,
            k_ptrs + n_full * stride_kt,
            v_ptrs + n_full * stride_vt,
            n_full + cols < n,
            d,
            m_i,
            l_i,
            acc,
            qk_scale,
            PREC,
            True,
            HEAD_DIM,
            BLOCK_D,
        )
    out = acc / l_i[:, None]
    tl.store(
        Out + (start + rows)[:, None] * stride_ot + h * stride_oh + d[None, :],
        out.to(Out.dtype.element_ty),
        mask=dim_mask(row_ok, d, HEAD_DIM, BLOCK_D),
    )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
    tiles: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Triton packed attention; ``tiles`` = (block_m, block_n, warps, stages) overrides the
    choice measured on H100/H200 (benchmarks/RESULTS.md): 128x128 tiles with 8 warps for
    long segments, 64x64 with 4 warps for short ones (more programs), and half-size tiles
    for fp32 inputs (tests, tiny models) to fit in shared memory."""
    if tiles is None:
        if q.dtype == torch.float32:
            tiles = (64, 32, 4, 2)
        elif max_seqlen >= 2048:
            tiles = (128, 128, 8, 3)
        else:
            tiles = (64, 64, 4, 3)
    block_m, block_n, num_warps, num_stages = tiles
    assert q.dim() == 3 and k.shape == v.shape and k.shape[0] == q.shape[0]
    assert k.shape[2] == q.shape[2] and q.shape[1] % k.shape[1] == 0
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.dim() == 1
    q, k, v = rows(q), rows(k), rows(v)
    t, n_heads, head_dim = q.shape
    out = torch.empty_like(q)
    n_seg = cu_seqlens.numel() - 1
    if t == 0 or n_seg == 0 or max_seqlen == 0:
        return out
    _varlen_fwd[(triton.cdiv(max_seqlen, block_m), n_heads, n_seg)](
        q,
        k,
        v,
        out,
        cu_seqlens,
        scale * 1.4426950408889634,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        GROUP=n_heads // k.shape[1],
        HEAD_DIM=head_dim,
        BLOCK_D=block_d(head_dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PREC=dot_precision(q.dtype),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
