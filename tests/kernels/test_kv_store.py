"""The block lanes' K/V store: one launch writes K and V of every packed row at its cache entry,
exactly as the two index writes of the reference, from the strided views the model hands it."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, DTYPES, randn

from dllmserve import kernels
from dllmserve.kernels import reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hkv,d", [(2, 16), (4, 128), (1, 24)])
def test_store_kv_writes_each_row_at_its_slot(dtype, hkv, d):
    g = torch.Generator().manual_seed(hkv * d)
    t, h, pages, page = 13, 3, 6, 4
    # k and v as the model has them: column slices of the fused projection's rows
    qk = randn(g, t, h + hkv, d, dtype=dtype)
    qkv = randn(g, t, (h + 2 * hkv) * d, dtype=dtype)
    k, v = qk[:, h:], qkv[:, (h + hkv) * d :].view(t, hkv, d)
    assert not k.is_contiguous() and not v.is_contiguous()
    slots = torch.randperm(pages * page, generator=g)[:t].to(DEVICE)
    before = [randn(g, pages, page, hkv, d, dtype=dtype) for _ in range(2)]
    got = [p.clone() for p in before]
    want = [p.clone() for p in before]
    kernels.store_kv(k, v, *got, slots)
    reference.store_kv(k, v, *want, slots)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0].view(-1, hkv, d)[slots], k)
    assert torch.equal(got[1].view(-1, hkv, d)[slots], v)
    untouched = torch.ones(pages * page, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False  # the entries no row names keep their values
    assert torch.equal(got[0].view(-1, hkv, d)[untouched], before[0].view(-1, hkv, d)[untouched])


def test_store_kv_names_a_bad_argument():
    k = torch.zeros(4, 2, 16, device=DEVICE)
    pool = torch.zeros(3, 4, 2, 16, device=DEVICE)
    slots = torch.arange(4, device=DEVICE)
    from dllmserve.kernels.kv_store import store_kv

    with pytest.raises(ValueError, match="store_kv: v must be"):
        store_kv(k, k[:3], pool, pool, slots)
    with pytest.raises(ValueError, match="store_kv: k_pool must be contiguous"):
        store_kv(k, k, torch.zeros(3, 4, 2, 8, device=DEVICE), pool, slots)
    with pytest.raises(ValueError, match="store_kv: slots must be"):
        store_kv(k, k, pool, pool, slots[:2])
    with pytest.raises(ValueError, match="store_kv: k must be"):
        store_kv(k.transpose(1, 2).contiguous().transpose(1, 2), k, pool, pool, slots)
