"""Block-causal attention over the exact block K/V cache (engine.block_attention): lanes that
store a finished block's K/V in the pages and lanes that attend to the cached blocks plus
themselves (every lane stores its K/V, a block still denoised at entries nobody reads yet),
packed in one call, equal plain attention under the block-causal mask over the whole
sequence. On the Triton REUSE kernel (interpreter on the CPU) and its reference."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import ATOL, DEVICE, DTYPES, cu, randn

from dllmserve.engine.block_attention import BlockAttention
from dllmserve.engine.kv_cache import KVCache
from dllmserve.models.layers import store_kv

H, HKV, D, B, PS = 4, 2, 16, 4, 4


def masked(q, k, v):
    """Plain attention of a whole sequence under the block-causal mask."""
    n = q.shape[0]
    blk = torch.arange(n, device=q.device) // B
    mask = torch.where(blk[None] <= blk[:, None], 0.0, -torch.inf).to(q.device)
    k, v = k.repeat_interleave(H // HKV, 1).float(), v.repeat_interleave(H // HKV, 1).float()
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * D**-0.5 + mask
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)


def _attention(cache, lanes, tables, n_layers=1):
    """lanes: (table index, start, end), each storing its K/V at its positions."""
    lengths = [e - s for _, s, e in lanes]
    width = max(len(t) for t in tables)
    padded = [torch.cat([t, t.new_zeros(width - len(t))]) for t in tables]
    pages = torch.stack([padded[t] for t, _, _ in lanes])[None].to(DEVICE)
    slots = [int(tables[t][p // PS]) * PS + p % PS for t, s, e in lanes for p in range(s, e)]
    z = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    return BlockAttention(
        cache=cache, scale=D**-0.5, n_dense_tokens=0, cu_dense=z, max_dense=0, n_select=0,
        n_select_tokens=0, select_q_rows=z.long(), cu_win=z, win_start=z, win_len=z,
        n_keep=z.view(1, 0), max_keep=[0], head_select=z.bool(), pool_kernel=z,
        select_pages=z.view(1, 0, 0), n_reuse=len(lanes), cu_reuse=cu(lengths),
        max_reuse=max(lengths), kept_len=torch.tensor([[s for _, s, _ in lanes]],
        dtype=torch.int32, device=DEVICE), reuse_pages=pages,
        write_slots=torch.tensor([slots], dtype=torch.long, device=DEVICE),
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_lanes_equal_block_causal_attention(dtype):
    gen = torch.Generator().manual_seed(3)
    # request 0: a fresh prompt of 10 tokens: blocks 0 and 1 stored, block 2 denoised;
    # request 1: blocks 0-1 cached already, block 2 finished (stored), block 3 denoised
    seqs = [(randn(gen, 12, H, D, dtype=dtype), randn(gen, 12, HKV, D, dtype=dtype),
             randn(gen, 12, HKV, D, dtype=dtype)) for _ in range(2)]  # fmt: skip
    seqs[1] = tuple(torch.cat([t, randn(gen, 4, t.shape[1], D, dtype=dtype)]) for t in seqs[1])
    cache = KVCache(
        torch.full((10, PS, HKV, D), float("nan"), dtype=dtype, device=DEVICE),
        torch.full((10, PS, HKV, D), float("nan"), dtype=dtype, device=DEVICE),
    )
    tables = [torch.tensor([7, 2, 5], dtype=torch.int32), torch.tensor([0, 9, 3, 4],
              dtype=torch.int32)]  # fmt: skip
    for pos in range(8):  # request 1's cached blocks
        p, e = int(tables[1][pos // PS]), pos % PS
        cache.k[p, e], cache.v[p, e] = seqs[1][1][pos], seqs[1][2][pos]
    lanes = [(0, 0, 4), (0, 4, 8), (0, 8, 12), (1, 8, 12), (1, 12, 16)]
    packed = [torch.cat([seqs[t][i][s:e] for t, s, e in lanes]) for i in range(3)]
    att = _attention(cache, lanes, tables)
    store_kv(packed[1], packed[2], att.kv_target(0))  # as the RoPE launch writes them
    out = att(0, *packed)
    want = torch.cat([masked(*seqs[0]), masked(*seqs[1])[8:]])
    torch.testing.assert_close(out.float(), want, atol=ATOL[dtype] * 4, rtol=0)
