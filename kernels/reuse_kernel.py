"""REUSE-step attention: a block's queries against its kept paged K/V plus its fresh K/V.

Memory-bound by design (a block of ~32 queries reads up to thousands of kept entries per KV
head), so one program owns one (request, KV head, row tile, split): the G query heads of the
group are folded into the row tile so every K/V byte is read once per group, and the kept
range is split across programs (flash-decoding) when requests x KV heads alone cannot fill
the GPU. The split count comes from static shapes only, so the launch is CUDA-graph safe and
never syncs with the host. Reference: ``reference.reuse_attention``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import block_d, dim_mask, dot_precision, num_sms, rows


@triton.jit
def _reuse_fwd(
    Q,
    KN,
    VN,
    CU_Q,
    KP,
    VP,
    PT,
    KEPT,
    Out,
    PO,
    PML,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_knt,
    stride_knh,
    stride_vnt,
    stride_vnh,
    stride_kpp,
    stride_kps,
    stride_kph,
    stride_vpp,
    stride_vps,
    stride_vph,
    stride_pt,
    stride_ot,
    stride_oh,
    stride_pos,
    stride_pot,
    stride_poh,
    stride_pms,
    stride_pmt,
    PAGE_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    r = tl.program_id(2)
    split = pid % NUM_SPLITS
    m_tile = pid // NUM_SPLITS
    q0 = tl.load(CU_Q + r).to(tl.int64)
    nq = tl.load(CU_Q + r + 1) - q0
    if m_tile * BLOCK_M >= nq * GROUP:
        return
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < nq * GROUP
    tok = q0 + rows // GROUP
    head = g * GROUP + rows % GROUP
    d = tl.arange(0, BLOCK_D)
    q = tl.load(
        Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=dim_mask(row_ok, d, HEAD_DIM, BLOCK_D),
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    kept = tl.load(KEPT + r)
    chunk = tl.cdiv(tl.cdiv(kept, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, kept)
    for start in range(lo, hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_ok = j < hi
        page = tl.load(PT + r * stride_pt + j // PAGE_SIZE, mask=j_ok, other=0).to(tl.int64)
        slot = j % PAGE_SIZE
        k = tl.load(
            KP
            + page[:, None] * stride_kpp
            + slot[:, None] * stride_kps
            + g * stride_kph
            + d[None, :],
            mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s = tl.where(j_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            VP
            + page[:, None] * stride_vpp
            + slot[:, None] * stride_vps
            + g * stride_vph
            + d[None, :],
            mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    if split == NUM_SPLITS - 1:
        for f0 in range(0, nq, BLOCK_N):
            j = f0 + tl.arange(0, BLOCK_N)
            j_ok = j < nq
            k = tl.load(
                KN + (q0 + j)[:, None] * stride_knt + g * stride_knh + d[None, :],
                mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
                other=0.0,
            )
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = tl.where(j_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(
                VN + (q0 + j)[:, None] * stride_vnt + g * stride_vnh + d[None, :],
                mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
                other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(
            Out + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
            out.to(Out.dtype.element_ty),
            mask=dim_mask(row_ok, d, HEAD_DIM, BLOCK_D),
        )
    else:
        tl.store(
            PO
            + split * stride_pos
            + tok[:, None] * stride_pot
            + head[:, None] * stride_poh
            + d[None, :],
            acc,
            mask=dim_mask(row_ok, d, HEAD_DIM, BLOCK_D),
        )
        ml = PML + split * stride_pms + tok * stride_pmt + head * 2
        tl.store(ml, m_i, mask=row_ok)
        tl.store(ml + 1, l_i, mask=row_ok)


@triton.jit
def _combine(
    PO,
    PML,
    Out,
    num_heads,
    stride_pos,
    stride_pot,
    stride_poh,
    stride_pms,
    stride_pmt,
    stride_ot,
    stride_oh,
    NUM_SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Merges the splits' partial softmax states of one token (all heads) into the output."""
    t = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < num_heads
    d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        ms = tl.load(PML + s * stride_pms + t * stride_pmt + h * 2, mask=h_ok, other=0.0)
        m = tl.maximum(m, ms)
    l_tot = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for s in tl.static_range(NUM_SPLITS):
        base = PML + s * stride_pms + t * stride_pmt + h * 2
        w = tl.exp2(tl.load(base, mask=h_ok, other=0.0) - m)
        l_tot += w * tl.load(base + 1, mask=h_ok, other=1.0)
        po = tl.load(
            PO + s * stride_pos + t * stride_pot + h[:, None] * stride_poh + d[None, :],
            mask=dim_mask(h_ok, d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        acc += w[:, None] * po
    out = acc / l_tot[:, None]
    tl.store(
        Out + t * stride_ot + h[:, None] * stride_oh + d[None, :],
        out.to(Out.dtype.element_ty),
        mask=dim_mask(h_ok, d, HEAD_DIM, BLOCK_D),
    )


def _tiles(rows: int, wide: bool) -> tuple[int, int]:
    """Row tile and warps: a block's query rows of one KV group (x7 for Dream) make the dot's
    M; 128-row tiles with 8 warps keep GQA compute-bound shapes on the tensor cores, fp32
    inputs stay at 64 rows to fit shared memory, and the dot needs at least 16."""
    if rows >= 128 and not wide:
        return 128, 8
    return min(64, max(16, triton.next_power_of_2(rows))), 4


def num_splits(n_programs: int, max_ctx: int, device: torch.device) -> int:
    """Splits of the kept range: enough programs for one wave (rounded up to a power of two),
    each split keeping >= 384 entries. Measured on H200: LLaDA batch 1 / 8 K kept -> 8 splits,
    Dream batch 8 / 1 K kept -> 2, batch 8 LLaDA (256 programs) and batch 64 -> none."""
    want = triton.next_power_of_2(math.ceil(num_sms(device) / max(1, n_programs)))
    return max(1, min(want, max_ctx // 384, 16))


def reuse_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cu_q: torch.Tensor,
    max_q: int,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    page_table: torch.Tensor,
    kept_len: torch.Tensor,
    scale: float,
    splits: int | None = None,
    block_n: int | None = None,
    block_m: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Triton REUSE attention; the keyword tails override the tile heuristics (benchmarks)."""
    wide = q.dtype == torch.float32  # fp32 tiles take twice the shared memory
    q, k_new, v_new, page_table = rows(q), rows(k_new), rows(v_new), rows(page_table)
    t_q, n_heads, head_dim = q.shape
    n_kv = k_new.shape[1]
    group = n_heads // n_kv
    n_req = cu_q.numel() - 1
    assert k_new.shape == v_new.shape == (t_q, n_kv, head_dim) and n_heads % n_kv == 0
    assert k_pool.shape == v_pool.shape and k_pool.shape[2:] == (n_kv, head_dim)
    assert k_pool.stride(-1) == 1 and v_pool.stride(-1) == 1
    assert page_table.dim() == 2 and page_table.shape[0] >= n_req and kept_len.numel() >= n_req
    assert cu_q.dtype == page_table.dtype == kept_len.dtype == torch.int32
    out = torch.empty_like(q)
    if t_q == 0 or n_req == 0:
        return out
    page_size = k_pool.shape[1]
    tile_m, warps = _tiles(max_q * group, wide)
    block_m = block_m or tile_m
    num_warps = num_warps or warps
    m_tiles = triton.cdiv(max(1, max_q) * group, block_m)
    max_ctx = min(page_table.shape[1] * page_size, k_pool.shape[0] * page_size)
    if splits is None:
        splits = num_splits(n_req * n_kv * m_tiles, max_ctx, q.device)
    if block_n is None:  # measured: 128-key tiles pay only with unsplit 128-row (GQA) tiles
        block_n = 32 if wide else (128 if block_m == 128 and splits == 1 else 64)
    if splits > 1:
        po = torch.empty((splits, t_q, n_heads, head_dim), device=q.device, dtype=torch.float32)
        pml = torch.empty((splits, t_q, n_heads, 2), device=q.device, dtype=torch.float32)
    else:
        po, pml = out, out
    k_pool_strides = k_pool.stride()[:3]
    v_pool_strides = v_pool.stride()[:3]
    _reuse_fwd[(m_tiles * splits, n_kv, n_req)](
        q,
        k_new,
        v_new,
        cu_q,
        k_pool,
        v_pool,
        page_table,
        kept_len,
        out,
        po,
        pml,
        scale * 1.4426950408889634,
        q.stride(0),
        q.stride(1),
        k_new.stride(0),
        k_new.stride(1),
        v_new.stride(0),
        v_new.stride(1),
        *k_pool_strides,
        *v_pool_strides,
        page_table.stride(0),
        out.stride(0),
        out.stride(1),
        po.stride(0),
        po.stride(1),
        po.stride(2),
        pml.stride(0),
        pml.stride(1),
        PAGE_SIZE=page_size,
        GROUP=group,
        NUM_SPLITS=splits,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d(head_dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PREC=dot_precision(q.dtype),
        num_warps=num_warps,
        num_stages=2 if wide else 3,
    )
    if splits > 1:
        block_h = min(16, triton.next_power_of_2(n_heads))
        _combine[(t_q, triton.cdiv(n_heads, block_h))](
            po,
            pml,
            out,
            n_heads,
            po.stride(0),
            po.stride(1),
            po.stride(2),
            pml.stride(0),
            pml.stride(1),
            out.stride(0),
            out.stride(1),
            NUM_SPLITS=splits,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d(head_dim),
            BLOCK_H=block_h,
        )
    return out
