"""The K/V cache of sparse requests: fixed-size pages allocated once at start.

A page holds `page_size` kept entries of one layer for all KV heads ([page_size, Hkv, D]); KV
heads keep different positions but the same count, so entry j of head g is simply head g's j-th
kept key. Requests reserve every page they can ever need when admitted, so nothing is allocated
per step and admission can wait instead of overcommitting.
"""

from __future__ import annotations

import torch


class PagePool:
    def __init__(
        self,
        num_pages: int,
        page_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_pages, page_size, n_kv_heads, head_dim)
        # never read before written: kept counts bound every read of a page
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.page_size = page_size
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))

    @staticmethod
    def page_bytes(page_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * page_size * n_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def pages_for(self, entries: int) -> int:
        return -(-entries // self.page_size)

    def allocate(self, n: int) -> list[int] | None:
        """n page ids, or None (and nothing taken) when fewer are free."""
        if n > len(self._free):
            return None
        taken = self._free[len(self._free) - n :]
        del self._free[len(self._free) - n :]
        return taken

    def free(self, pages: list[int]) -> None:
        self._free.extend(pages)
