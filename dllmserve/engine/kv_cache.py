"""The K/V cache of sparse requests: fixed-size pages allocated once at start
(docs/design.md §12).

A page holds `page_size` kept entries of one layer for all KV heads ([page_size, Hkv, D]); KV
heads keep different positions but the same count, so entry j of head g is simply head g's j-th
kept key. Which pages are free is `page_pool.PagePool`'s business.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from dllmserve.errors import CapacityError
from dllmserve.models.config import ModelConfig

CPU_CACHE_BYTES = 1 << 30  # the CPU cache when num_cache_pages is not given


def page_bytes(page_size: int, cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of one page: K and V of `page_size` entries of every KV head."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * page_size * cfg.n_kv_heads * cfg.head_dim * elem


def auto_num_pages(
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    size: int,
    utilization: float,
    batched_tokens: int,
) -> int:
    """Pages of `size` bytes that fit the cache budget: the share of GPU memory left after the
    weights and a worst-case iteration's activations, or a fixed 1 GiB on the CPU."""
    if device.type != "cuda":
        return max(1, CPU_CACHE_BYTES // size)
    # memory an earlier engine of this process left in PyTorch's cache counts as free (the
    # seed guide builds one LLM per ratio in a loop, dropping the last with `del llm`)
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    elem = torch.empty((), dtype=dtype).element_size()
    act = batched_tokens * (8 * cfg.d_model + 4 * cfg.ffn_width) * elem  # MoE: k experts + shared
    budget = total * utilization - (total - free) - act
    pages = int(budget // size)
    if pages < 1:
        raise CapacityError(
            f"no GPU memory left for the cache: {free / 2**30:.1f} GiB free of "
            f"{total / 2**30:.1f}; raise gpu_memory_utilization or lower max_num_batched_tokens"
        )
    return pages


@dataclass
class KVCache:
    k: torch.Tensor  # [pages, page_size, Hkv, D]; never read before written (kept counts
    v: torch.Tensor  # bound every read of a page)

    @classmethod
    def allocate(
        cls, num_pages: int, page_size: int, cfg: ModelConfig, dtype: torch.dtype, device
    ) -> KVCache:
        shape = (num_pages, page_size, cfg.n_kv_heads, cfg.head_dim)
        return cls(
            torch.empty(shape, dtype=dtype, device=device),
            torch.empty(shape, dtype=dtype, device=device),
        )
