"""SELECT-step retention: score the candidates, max-pool, top-k per KV head, store into pages.

Five launches, none of which syncs with the host (grids come from static shapes; programs
past a request's real length exit at once):
0. the window's mean query per request and head;
1. scores: one pass over the sequence's keys against those means;
2. max-pool along the candidates, clipped at each request's ends;
3. top-k per (request, KV head): the n-th largest pooled score is found by a 4-bit radix
   search over order-preserving integer keys (8 passes over scores that stay in L2), then one
   ordered compaction pass keeps everything above it plus the lowest-index ties, so the kept
   positions come out sorted without a sort (and pads the rest with -1);
4. the K/V copy of the kept positions into the request's pages, with a wide grid.
Reference: ``reference.select_and_store`` (the CPU path and the tests' oracle).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_d, dim_mask, rows
from .selection_args import SelectionArgs


@triton.jit
def _window_mean(
    Q,
    CU_W,
    QBAR,
    n_heads,
    stride_qt,
    stride_qh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    r = tl.program_id(0)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < n_heads
    d = tl.arange(0, BLOCK_D)
    start = tl.load(CU_W + r).to(tl.int64)
    n = tl.load(CU_W + r + 1) - start
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for i in range(0, n):
        acc += tl.load(
            Q + (start + i) * stride_qt + h[:, None] * stride_qh + d[None, :],
            mask=dim_mask(h_ok, d, HEAD_DIM, BLOCK_D),
            other=0.0,
        ).to(tl.float32)
    tl.store(
        QBAR + (r * n_heads + h[:, None]) * HEAD_DIM + d[None, :],
        acc / tl.maximum(n, 1).to(tl.float32),
        mask=dim_mask(h_ok, d, HEAD_DIM, BLOCK_D),
    )


@triton.jit
def _scores(
    QBAR,
    K,
    CU,
    WS,
    WL,
    HS,
    SC,
    scale,
    n_kv,
    stride_kt,
    stride_kh,
    stride_sg,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    tile = tl.program_id(0)
    r = tl.program_id(1)
    base = tl.load(CU + r).to(tl.int64)
    ws = tl.load(WS + r)
    wl = tl.load(WL + r)
    n_c = tl.load(CU + r + 1) - base - wl
    if tile * BLOCK_C >= n_c:
        return
    head_select = tl.load(HS + r).to(tl.int32)
    c = tile * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < n_c
    pos = tl.where(c < ws, c, c + wl)
    d = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_C], tl.float32)
    for g in range(n_kv):
        k = tl.load(
            K + (base + pos)[:, None] * stride_kt + g * stride_kh + d[None, :],
            mask=dim_mask(c_ok, d, HEAD_DIM, BLOCK_D),
            other=0.0,
        ).to(tl.float32)
        best = tl.full([BLOCK_C], float("-inf"), tl.float32)
        for i in tl.static_range(GROUP):
            qh = tl.load(QBAR + ((r * n_kv + g) * GROUP + i) * HEAD_DIM + d, mask=d < HEAD_DIM)
            s = tl.sum(k * qh[None, :], 1) * scale
            best = tl.maximum(best, s)
            total += s
        if head_select != 0:
            tl.store(SC + g * stride_sg + base + c, best, mask=c_ok)
    if head_select == 0:
        for g in range(n_kv):
            tl.store(SC + g * stride_sg + base + c, total, mask=c_ok)


@triton.jit
def _pool(
    SC,
    PO,
    CU,
    WL,
    PK,
    stride_sg,
    BLOCK_C: tl.constexpr,
):
    tile = tl.program_id(0)
    r = tl.program_id(1)
    g = tl.program_id(2)
    base = tl.load(CU + r).to(tl.int64)
    n_c = tl.load(CU + r + 1) - base - tl.load(WL + r)
    if tile * BLOCK_C >= n_c:
        return
    w = tl.load(PK + r) // 2
    c = tile * BLOCK_C + tl.arange(0, BLOCK_C)
    row = SC + g * stride_sg + base
    best = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for o in range(-w, w + 1):
        j = c + o
        best = tl.maximum(best, tl.load(row + j, mask=(j >= 0) & (j < n_c), other=float("-inf")))
    tl.store(PO + g * stride_sg + base + c, best, mask=c < n_c)


@triton.jit
def _order_key(x):
    """int64 in [0, 2^32) with the order of the fp32 values (-0.0 counted as +0.0)."""
    b = (x + 0.0).to(tl.int32, bitcast=True)
    b = tl.where(b < 0, b ^ 0x7FFFFFFF, b)
    return b.to(tl.int64) + 2147483648


@triton.jit
def _top_k(
    PO,
    CU,
    WS,
    WL,
    NK,
    OUT,
    max_keep,
    stride_sg,
    stride_or,
    stride_og,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    g = tl.program_id(1)
    n = tl.load(NK + r)
    out = OUT + r * stride_or + g * stride_og
    for j0 in range(n, max_keep, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        tl.store(out + j, tl.full([BLOCK], -1, tl.int64), mask=j < max_keep)
    if n == 0:
        return
    base = tl.load(CU + r).to(tl.int64)
    ws = tl.load(WS + r)
    wl = tl.load(WL + r)
    n_c = tl.load(CU + r + 1) - base - wl
    row = PO + g * stride_sg + base
    digit = tl.arange(0, 16).to(tl.int64)
    # Invariant: at least n keys are >= prefix. Fix 4 bits per pass, most significant first.
    prefix = tl.zeros([], tl.int64)
    for p in range(8):
        cand = prefix + (digit << (28 - 4 * p))
        cnt = tl.zeros([16], tl.int32)
        for start in range(0, n_c, BLOCK):
            c = start + tl.arange(0, BLOCK)
            key = tl.where(c < n_c, _order_key(tl.load(row + c, mask=c < n_c, other=0.0)), -1)
            cnt += tl.sum((key[:, None] >= cand[None, :]).to(tl.int32), 0)
        best = tl.sum((cnt >= n).to(tl.int64)) - 1
        prefix = prefix + (best << (28 - 4 * p))
    n_gt = tl.zeros([], tl.int32)
    for start in range(0, n_c, BLOCK):
        c = start + tl.arange(0, BLOCK)
        key = tl.where(c < n_c, _order_key(tl.load(row + c, mask=c < n_c, other=0.0)), -1)
        n_gt += tl.sum((key > prefix).to(tl.int32))
    eq_left = n - n_gt
    taken = tl.zeros([], tl.int32)
    for start in range(0, n_c, BLOCK):
        c = start + tl.arange(0, BLOCK)
        key = tl.where(c < n_c, _order_key(tl.load(row + c, mask=c < n_c, other=0.0)), -1)
        eq = (key == prefix).to(tl.int32)
        eq_rank = tl.cumsum(eq, 0) - eq
        keep = ((key > prefix) | ((eq != 0) & (eq_rank < eq_left))).to(tl.int32)
        idx = taken + tl.cumsum(keep, 0) - keep
        pos = tl.where(c < ws, c, c + wl).to(tl.int64)
        tl.store(out + idx, pos, mask=keep != 0)
        taken += tl.sum(keep)
        eq_left -= tl.sum(eq)


@triton.jit
def _store(
    OUT,
    NK,
    CU,
    K,
    V,
    KP,
    VP,
    PT,
    stride_or,
    stride_og,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kpp,
    stride_kps,
    stride_kph,
    stride_vpp,
    stride_vps,
    stride_vph,
    stride_pt,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    tile = tl.program_id(0)
    g = tl.program_id(1)
    r = tl.program_id(2)
    n = tl.load(NK + r)
    if tile * BLOCK_J >= n:
        return
    j = tile * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = j < n
    tok = tl.load(CU + r).to(tl.int64) + tl.load(
        OUT + r * stride_or + g * stride_og + j, mask=j_ok, other=0
    )
    page = tl.load(PT + r * stride_pt + j // PAGE_SIZE, mask=j_ok, other=0).to(tl.int64)
    slot = j % PAGE_SIZE
    d = tl.arange(0, BLOCK_D)
    k = tl.load(
        K + tok[:, None] * stride_kt + g * stride_kh + d[None, :],
        mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
    )
    tl.store(
        KP + page[:, None] * stride_kpp + slot[:, None] * stride_kps + g * stride_kph + d[None, :],
        k,
        mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
    )
    v = tl.load(
        V + tok[:, None] * stride_vt + g * stride_vh + d[None, :],
        mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
    )
    tl.store(
        VP + page[:, None] * stride_vpp + slot[:, None] * stride_vps + g * stride_vph + d[None, :],
        v,
        mask=dim_mask(j_ok, d, HEAD_DIM, BLOCK_D),
    )


def _check(a: SelectionArgs) -> None:
    """The shapes, dtypes and strides the kernels index by (host-side: no sync)."""
    n_req = a.cu_seq.numel() - 1
    t_k, n_kv, head_dim = a.k_seq.shape
    assert a.v_seq.shape == a.k_seq.shape and a.q_win.dim() == 3
    assert a.q_win.shape[2] == head_dim and a.q_win.shape[1] % n_kv == 0
    assert a.k_pool.shape == a.v_pool.shape and a.k_pool.shape[2:] == (n_kv, head_dim)
    assert a.k_pool.stride(-1) == 1 and a.v_pool.stride(-1) == 1
    assert a.cu_win.numel() == n_req + 1 and a.page_table.shape[0] == n_req
    for t in (a.win_start, a.win_len, a.n_keep, a.pool_kernel, a.head_select):
        assert t.shape == (n_req,)
    for t in (a.cu_win, a.cu_seq, a.win_start, a.win_len, a.n_keep, a.pool_kernel, a.page_table):
        assert t.dtype == torch.int32 and t.device == a.k_seq.device


def select_and_store(a: SelectionArgs) -> torch.Tensor:
    """Triton selection; reproduces ``reference.select_and_store`` (positions bit for bit)."""
    _check(a)
    q_win, k_seq, v_seq = rows(a.q_win), rows(a.k_seq), rows(a.v_seq)
    page_table = rows(a.page_table)
    cu_win, cu_seq, k_pool, v_pool = a.cu_win, a.cu_seq, a.k_pool, a.v_pool
    win_start, win_len, n_keep, max_keep = a.win_start, a.win_len, a.n_keep, a.max_keep
    n_req = cu_seq.numel() - 1
    t_k, n_kv, head_dim = k_seq.shape
    group = q_win.shape[1] // n_kv
    dev = k_seq.device
    kept = torch.empty((n_req, n_kv, max_keep), dtype=torch.int64, device=dev)
    if n_req == 0 or max_keep == 0:
        return kept
    n_heads = q_win.shape[1]
    qbar = torch.empty((n_req, n_heads, head_dim), device=dev, dtype=torch.float32)
    block_h = min(8, triton.next_power_of_2(n_heads))
    _window_mean[(n_req, triton.cdiv(n_heads, block_h))](
        q_win,
        cu_win,
        qbar,
        n_heads,
        q_win.stride(0),
        q_win.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d(head_dim),
        BLOCK_H=block_h,
    )
    scores = torch.empty((n_kv, t_k), device=dev, dtype=torch.float32)
    pooled = torch.empty_like(scores)
    block_c = 64
    grid = (max(1, triton.cdiv(t_k, block_c)), n_req)
    _scores[grid](
        qbar,
        k_seq,
        cu_seq,
        win_start,
        win_len,
        a.head_select,
        scores,
        a.scale,
        n_kv,
        k_seq.stride(0),
        k_seq.stride(1),
        scores.stride(0),
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d(head_dim),
        BLOCK_C=block_c,
    )
    _pool[(max(1, triton.cdiv(t_k, 256)), n_req, n_kv)](
        scores, pooled, cu_seq, win_len, a.pool_kernel, scores.stride(0), BLOCK_C=256
    )
    _top_k[(n_req, n_kv)](
        pooled,
        cu_seq,
        win_start,
        win_len,
        n_keep,
        kept,
        max_keep,
        pooled.stride(0),
        kept.stride(0),
        kept.stride(1),
        BLOCK=512,
        num_warps=8,
    )
    block_j = 32
    _store[(triton.cdiv(max_keep, block_j), n_kv, n_req)](
        kept,
        n_keep,
        cu_seq,
        k_seq,
        v_seq,
        k_pool,
        v_pool,
        page_table,
        kept.stride(0),
        kept.stride(1),
        k_seq.stride(0),
        k_seq.stride(1),
        v_seq.stride(0),
        v_seq.stride(1),
        *k_pool.stride()[:3],
        *v_pool.stride()[:3],
        page_table.stride(0),
        PAGE_SIZE=k_pool.shape[1],
        HEAD_DIM=head_dim,
        BLOCK_D=block_d(head_dim),
        BLOCK_J=block_j,
    )
    return kept
