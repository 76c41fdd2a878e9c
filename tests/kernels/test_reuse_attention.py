"""Triton REUSE attention (paged kept K/V ++ fresh K/V) vs the PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import ATOL, DTYPES, ON_GPU, cu, page_table, randn

import dllmserve.kernels as K
from dllmserve.kernels import reference
from dllmserve.kernels.reuse_kernel import reuse_attention as triton_reuse

CASES = [
    # (H, Hkv, D, queries per request, kept per request, page size)
    (4, 4, 64, [3], [1], 4),
    (4, 2, 64, [3, 0, 5, 2], [7, 3, 0, 20], 4),
    (7, 1, 64, [2, 4], [1, 40], 8),
    (28, 4, 128, [5, 1], [9, 0], 16),
    (2, 2, 128, [8], [70], 16),
    (14, 2, 64, [0, 0], [5, 3], 4),
    (7, 1, 8, [4, 2], [9, 30], 4),
    (4, 2, 24, [3], [17], 8),
]
if ON_GPU:
    CASES += [
        (32, 32, 128, [32] * 8, [600, 2048, 1, 0, 1500, 2000, 33, 1024], 16),
        (28, 4, 128, [32, 32, 0, 33], [8192, 4000, 10, 3], 64),
        (32, 32, 128, [32], [8192], 16),
    ]


def make_inputs(h, hkv, d, nq, kept, page_size, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    t = sum(nq)
    q, k_new, v_new = (randn(gen, t, n, d, dtype=dtype) for n in (h, hkv, hkv))
    needed = [-(-n // page_size) for n in kept]
    num_pages = sum(needed) + 3
    k_pool = randn(gen, num_pages, page_size, hkv, d, dtype=dtype)
    v_pool = randn(gen, num_pages, page_size, hkv, d, dtype=dtype)
    table = page_table(gen, needed, num_pages)
    kept_len = torch.tensor(kept, dtype=torch.int32, device=q.device)
    return q, k_new, v_new, cu(nq), max(nq), k_pool, v_pool, table, kept_len, d**-0.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,hkv,d,nq,kept,page_size", CASES)
def test_reuse_attention_matches_reference(h, hkv, d, nq, kept, page_size, dtype):
    args = make_inputs(h, hkv, d, nq, kept, page_size, dtype, seed=len(nq) * 31 + h)
    out = K.reuse_attention(*args)
    ref = reference.reuse_attention(*args)
    assert out.dtype == dtype and out.shape == args[0].shape
    torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[dtype], rtol=0)


@pytest.mark.parametrize("splits", [2, 3, 5])
def test_reuse_attention_split_kv_matches_reference(splits):
    """Flash-decoding splits (some left empty by short requests) merge to the same result."""
    dtype = DTYPES[0]
    args = make_inputs(7, 1, 64, [4, 2, 0, 1], [50, 1, 6, 0], 8, dtype, seed=splits)
    out = triton_reuse(*args, splits=splits, block_n=16)
    torch.testing.assert_close(
        out.float(), reference.reuse_attention(*args).float(), atol=ATOL[dtype], rtol=0
    )
