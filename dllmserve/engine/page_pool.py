"""Which cache pages are free: page ids only (the K/V tensors are `kv_cache.KVCache`).

Requests reserve every page they can ever need when admitted (`ResolvedRequest.cache_pages`),
so nothing is allocated per step and admission can wait instead of overcommitting.
"""

from __future__ import annotations


class PagePool:
    def __init__(self, num_pages: int) -> None:
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        """n free page ids; the caller has checked that `num_free` covers them."""
        if n > len(self._free):
            raise RuntimeError(f"{n} pages asked for, {len(self._free)} free")
        taken = self._free[len(self._free) - n :]
        del self._free[len(self._free) - n :]
        return taken

    def free(self, pages: list[int]) -> None:
        self._free.extend(pages)
