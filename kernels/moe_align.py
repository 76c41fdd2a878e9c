"""The MoE layer's align step: the routing rows sorted by expert, each expert's run padded to a
multiple of BLOCK_M, and each M-block's expert (`moe_kernel`'s GEMMs read them).

A counting sort without a host sync: a row's place is its expert's padded start, plus the
expert's rows in earlier chunks of CHUNK rows, plus its rank among its own chunk's rows of that
expert, so the rows of one expert keep their (t, j) order. Many rows (a large batch) run it as
parallel per-chunk histograms, their prefix sum over chunks and a parallel scatter (four
launches); a decode step's few rows (at most `ONE_PROGRAM_ROWS`) run it in one program that
walks the chunks in turn, since there the launches cost more than the work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ONE_PROGRAM_ROWS = 1024
"""Up to this many routing rows (T · k: a batch-1 block step of 32 tokens × top-8 has 256), the
align step is one launch instead of four."""


@triton.jit
def _padded_runs(total, bins, E, BLOCK_M: tl.constexpr):
    """Each expert's row count padded to BLOCK_M, and the inclusive prefix sum of those."""
    padded = tl.where(bins < E, (total + BLOCK_M - 1) // BLOCK_M * BLOCK_M, 0)
    return padded, tl.cumsum(padded, 0)


@triton.jit
def _place_chunk(IDS, ROWS, r, i, n, E, cursor):
    """Store the rows r = c * CHUNK + i of one chunk at cursor[expert] + their rank among the
    chunk's rows of that expert; returns the chunk's ids (E past n)."""
    ok = r < n
    ids = tl.load(IDS + r, mask=ok, other=E)
    base = tl.gather(cursor, ids, 0)
    earlier = (ids[:, None] == ids[None, :]) & (i[None, :] < i[:, None])
    rank = tl.sum(earlier.to(tl.int32), axis=1)
    tl.store(ROWS + base + rank, r, mask=ok)
    return ids


@triton.jit
def _block_experts(BLOCK_EXPERT, pad_end, first, n_blocks, step, E, BLOCK_M: tl.constexpr,
                   NB: tl.constexpr):  # fmt: skip
    """M-blocks first, first + step, ... (NB at a time): the expert whose padded run holds
    each one, -1 past the last run."""
    for b0 in range(first, n_blocks, step):
        b = b0 + tl.arange(0, NB)
        done = tl.sum((pad_end[None, :] <= b[:, None] * BLOCK_M).to(tl.int32), axis=1)
        tl.store(BLOCK_EXPERT + b, tl.where(done < E, done, -1), mask=b < n_blocks)


@triton.jit
def _count_kernel(IDS, HIST, n, E, CHUNK: tl.constexpr, E_P2: tl.constexpr):
    """HIST[c, e] = how many of chunk c's rows go to expert e (bin E collects the padding)."""
    c = tl.program_id(0)
    r = c * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(IDS + r, mask=r < n, other=E)
    tl.store(HIST + c * E_P2 + tl.arange(0, E_P2), tl.histogram(ids, E_P2))


@triton.jit
def _scatter_kernel(
    IDS, HIST, CUM, ROWS, BLOCK_EXPERT, n, E, n_chunks, n_blocks,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, E_P2: tl.constexpr, NB: tl.constexpr,
):  # fmt: skip
    """Chunk c's rows to their places (CUM is HIST's inclusive prefix sum over chunks); the
    programs also share out the M-blocks' experts."""
    c = tl.program_id(0)
    bins = tl.arange(0, E_P2)
    padded, pad_end = _padded_runs(tl.load(CUM + (n_chunks - 1) * E_P2 + bins), bins, E, BLOCK_M)
    row_c = c * E_P2 + bins
    cursor = pad_end - padded + tl.load(CUM + row_c) - tl.load(HIST + row_c)
    i = tl.arange(0, CHUNK)
    _place_chunk(IDS, ROWS, c * CHUNK + i, i, n, E, cursor)
    _block_experts(BLOCK_EXPERT, pad_end, c * NB, n_blocks, n_chunks * NB, E, BLOCK_M, NB)


@triton.jit
def _align_one_program(
    IDS, ROWS, BLOCK_EXPERT, n, E, n_blocks,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, E_P2: tl.constexpr, NB: tl.constexpr,
    FILL: tl.constexpr,
):  # fmt: skip
    """The whole align step in one program: the totals over every chunk, the padding rows
    filled, then each chunk's rows placed in turn (the cursor moving past each chunk's)."""
    bins = tl.arange(0, E_P2)
    i = tl.arange(0, CHUNK)
    total = tl.zeros([E_P2], dtype=tl.int32)
    for c0 in range(0, n, CHUNK):
        total += tl.histogram(tl.load(IDS + c0 + i, mask=c0 + i < n, other=E), E_P2)
    padded, pad_end = _padded_runs(total, bins, E, BLOCK_M)
    size = n_blocks * BLOCK_M
    for f0 in range(0, size, FILL):
        f = f0 + tl.arange(0, FILL)
        tl.store(ROWS + f, tl.full([FILL], 0, tl.int32) + n, mask=f < size)
    tl.debug_barrier()  # the padding's stores land before the rows' own
    cursor = pad_end - padded
    for c0 in range(0, n, CHUNK):
        ids = _place_chunk(IDS, ROWS, c0 + i, i, n, E, cursor)
        cursor += tl.histogram(ids, E_P2)
    _block_experts(BLOCK_EXPERT, pad_end, 0, n_blocks, NB, E, BLOCK_M, NB)


def align_rows(
    topk_ids: torch.Tensor, n_experts: int, block_m: int, chunk: int = 64,
    one_program_rows: int = ONE_PROGRAM_ROWS,
):  # fmt: skip
    """(rows, block_expert): rows [n_blocks * block_m] int32 holds the routing rows (t * k + j)
    grouped by expert, in (t, j) order within one, each expert's run padded with T * k to a
    multiple of block_m; block_expert [n_blocks] int32 is each M-block's expert, -1 past the
    last. n_blocks = cdiv(T * k, block_m) + min(E, T * k) bounds the padded count for any
    routing, so the shapes depend only on T, k and E. One launch up to `one_program_rows` rows,
    else four (a fill, per-chunk histograms, their prefix sum, the scatter); none syncs."""
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    dev = flat.device
    n_blocks = triton.cdiv(n, block_m) + min(n_experts, n)
    n_chunks = triton.cdiv(n, chunk)
    e_p2 = triton.next_power_of_2(n_experts + 1)
    nb = max(1, 4096 // e_p2)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=dev)
    if n <= one_program_rows:
        rows_ = torch.empty(n_blocks * block_m, dtype=torch.int32, device=dev)
        _align_one_program[(1,)](
            flat, rows_, block_expert, n, n_experts, n_blocks,
            BLOCK_M=block_m, CHUNK=chunk, E_P2=e_p2, NB=nb, FILL=1024,
        )  # fmt: skip
        return rows_, block_expert
    rows_ = torch.full((n_blocks * block_m,), n, dtype=torch.int32, device=dev)
    hist = torch.empty((n_chunks, e_p2), dtype=torch.int32, device=dev)
    _count_kernel[(n_chunks,)](flat, hist, n, n_experts, CHUNK=chunk, E_P2=e_p2)
    cum = torch.cumsum(hist, 0, dtype=torch.int32)
    _scatter_kernel[(n_chunks,)](
        flat, hist, cum, rows_, block_expert, n, n_experts, n_chunks, n_blocks,
        BLOCK_M=block_m, CHUNK=chunk, E_P2=e_p2, NB=nb,
    )  # fmt: skip
    return rows_, block_expert
