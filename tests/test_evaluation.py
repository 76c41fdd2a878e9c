"""The one dense stand-in attention (masked loss, FP8 accuracy benchmark) is plain softmax
attention over the whole sequence, grouped-query heads included."""

from __future__ import annotations

import torch

from dllmserve.evaluation import OneSequenceAttention


def test_one_sequence_attention_is_plain_bidirectional_attention():
    g = torch.Generator().manual_seed(0)
    T, H, Hkv, D = 7, 4, 2, 8
    q, k, v = (torch.randn(T, h, D, generator=g) for h in (H, Hkv, Hkv))
    got = OneSequenceAttention()(0, q, k, v)
    kk, vv = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v))  # each kv head serves 2
    weights = torch.softmax(torch.einsum("thd,shd->hts", q, kk) / D**0.5, dim=-1)
    want = torch.einsum("hts,shd->thd", weights, vv)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert OneSequenceAttention().select(0, q, k, v) is None  # nothing kept for later steps
