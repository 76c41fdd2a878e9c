"""The fresh K/V of packed rows stored into the paged cache in one launch (block-diffusion lanes,
`engine/block_attention.py`): row t's K and V go to entry `slots[t]` of the flattened pools, a
program per row copying both. Two PyTorch index writes did this in two launches a layer.
Reference: `reference.store_kv`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import require


@triton.jit
def _store_kv_kernel(K, V, K_POOL, V_POOL, SLOTS, stride_k, stride_v, ROW: tl.constexpr,
                     BLOCK: tl.constexpr):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(SLOTS + t).to(tl.int64)
    i = tl.arange(0, BLOCK)
    m = i < ROW
    tl.store(K_POOL + slot * ROW + i, tl.load(K + t * stride_k + i, mask=m), mask=m)
    tl.store(V_POOL + slot * ROW + i, tl.load(V + t * stride_v + i, mask=m), mask=m)


def _dense_rows(t: torch.Tensor) -> bool:
    """[T, Hkv, D] whose (Hkv, D) part is one contiguous row (the rows may be strided)."""
    return t.stride(2) == 1 and t.stride(1) == t.shape[2]


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """k_pool.view(-1, Hkv, D)[slots] = k and the same for v (k, v [T, Hkv, D]; pools
    [pages, page_size, Hkv, D] contiguous; slots int64 [T], distinct)."""
    name = "store_kv"
    row = k.shape[1] * k.shape[2]
    for arg, t in (("k", k), ("v", v)):
        require(name, t.shape == k.shape and _dense_rows(t), arg, "[T, Hkv, D] with dense rows", t)
        require(name, t.dtype == k_pool.dtype, arg, f"{k_pool.dtype}", t)
    for arg, p in (("k_pool", k_pool), ("v_pool", v_pool)):
        require(name, p.is_contiguous() and p.shape[2:] == k.shape[1:], arg,
                f"contiguous [pages, page_size, {k.shape[1]}, {k.shape[2]}]", p)  # fmt: skip
    require(name, slots.shape == (k.shape[0],), "slots", f"[{k.shape[0]}]", slots)
    if k.shape[0]:
        _store_kv_kernel[(k.shape[0],)](
            k, v, k_pool, v_pool, slots, k.stride(0), v.stride(0),
            ROW=row, BLOCK=triton.next_power_of_2(row),
        )  # fmt: skip
