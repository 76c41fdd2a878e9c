"""Triton packed attention vs the PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import ATOL, DTYPES, ON_GPU, cu, randn

import dllmserve.kernels as K
from dllmserve.kernels import reference

CASES = [
    # (H, Hkv, D, segment lengths)
    (4, 4, 64, [1]),
    (4, 2, 64, [37, 0, 5, 64]),
    (7, 1, 64, [70, 3]),
    (28, 4, 128, [33]),
    (2, 2, 128, [130, 1, 0]),
    (7, 1, 8, [20, 5]),  # the tiny Dream test model: head dim below tl.dot's 16
    (4, 2, 24, [17]),  # head dim not a power of two
]
if ON_GPU:
    CASES += [(32, 32, 128, [512, 2048, 17, 0, 1000]), (28, 4, 128, [4096, 333])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,hkv,d,lens", CASES)
def test_varlen_attention_matches_reference(h, hkv, d, lens, dtype):
    gen = torch.Generator().manual_seed(hash((h, hkv, d, len(lens))) % 1000)
    t = sum(lens)
    q, k, v = (randn(gen, t, n, d, dtype=dtype) for n in (h, hkv, hkv))
    cu_seqlens = cu(lens)
    scale = d**-0.5
    out = K.varlen_attention(q, k, v, cu_seqlens, max(lens), scale)
    ref = reference.varlen_attention(q, k, v, cu_seqlens, max(lens), scale)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[dtype], rtol=0)


def test_dispatcher_uses_reference_without_switch(monkeypatch):
    """CPU tensors take the PyTorch path unless the test switch is on."""
    monkeypatch.setattr(K, "force_triton", False)
    q = torch.randn(5, 2, 8)
    cu_seqlens = torch.tensor([0, 5], dtype=torch.int32)
    out = K.varlen_attention(q, q, q, cu_seqlens, 5, 0.5)
    assert torch.equal(out, reference.varlen_attention(q, q, q, cu_seqlens, 5, 0.5))
