"""Prefix caching across block-diffusion requests (docs/design.md §15): the K/V pages of full
prompt blocks, found by content and position, shared by reference count, evicted LRU.

Under block-causal attention the K/V of block i depends only on the tokens of blocks 0..i, so a
block's hash chains its parent's hash with its own tokens (vLLM's automatic prefix caching): two
prompts that start with the same blocks share their pages exactly, whatever follows. A request
whose prompt starts with cached blocks takes their pages (one more reference each) and skips
their prefill; once its own full prompt blocks are stored, the cache adopts their pages. An
entry nobody references stays cached until the pool needs its pages (least recently used first).
Model-free and torch-free: the `Batcher` drives it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dllmserve.engine.page_pool import PagePool


@dataclass
class Entry:
    """One cached block: its pages in every layer and the requests holding it."""

    key: bytes
    pages: list[list[int]]  # [layer] -> page ids (block_length // page_size of them)
    refs: int = 0

    @property
    def n_pages(self) -> int:
        return sum(len(layer) for layer in self.pages)


def block_hashes(prompt: Sequence[int], block_length: int) -> list[bytes]:
    """The chained hash of each full block of `prompt` (block i: blocks 0..i's tokens, each
    as 8 little-endian bytes): one array conversion, not a Python loop over the tokens."""
    data = np.asarray(prompt, dtype="<i8").tobytes()
    step = 8 * block_length
    out: list[bytes] = []
    parent = block_length.to_bytes(8, "little")
    for start in range(0, len(prompt) // block_length * step, step):
        parent = hashlib.sha256(parent + data[start : start + step]).digest()
        out.append(parent)
    return out


class PrefixCache:
    def __init__(self, pool: PagePool, page_size: int) -> None:
        self.pool = pool
        self.page_size = page_size
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        self.queried_blocks = 0  # full prompt blocks looked up at admission
        self.hit_blocks = 0  # of which found cached
        # pages of all entries and of those nobody references, kept as they change: admission
        # asks at every step while a request waits, and the cache can hold thousands of blocks
        self.cached_pages = 0
        self._idle_pages = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_blocks / self.queried_blocks if self.queried_blocks else 0.0

    def match(self, keys: Sequence[bytes]) -> list[Entry]:
        """The cached entries of the longest cached prefix of `keys` (no side effect)."""
        out = []
        for k in keys:
            e = self._entries.get(k)
            if e is None:
                break
            out.append(e)
        return out

    def evictable_pages(self, keep: Sequence[Entry] = ()) -> int:
        """Pages that eviction could free now, sparing `keep`."""
        spared = {id(e): e for e in keep if e.refs == 0}
        return self._idle_pages - sum(e.n_pages for e in spared.values())

    def acquire(self, entries: Sequence[Entry], queried: int) -> None:
        """A request admitted with `entries` (of its `queried` full prompt blocks) holds them."""
        self.queried_blocks += queried
        self.hit_blocks += len(entries)
        for e in entries:
            if e.refs == 0:
                self._idle_pages -= e.n_pages
            e.refs += 1
            self._entries.move_to_end(e.key)

    def release(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            e.refs -= 1
            if e.refs == 0:
                self._idle_pages += e.n_pages

    def adopt(self, key: bytes, pages: list[list[int]]) -> Entry | None:
        """Cache a request's stored block (it holds one reference); None when the key is cached
        already (another request stored the same block meanwhile: its pages stay private)."""
        if key in self._entries:
            return None
        e = self._entries[key] = Entry(key, pages, refs=1)
        self.cached_pages += e.n_pages
        return e

    def evict(self, pages: int) -> None:
        """Free at least `pages` pages from unreferenced entries, least recently used first."""
        freed = 0
        for key in [k for k, e in self._entries.items() if e.refs == 0]:
            if freed >= pages:
                break
            e = self._entries.pop(key)
            for layer in e.pages:
                self.pool.free(layer)
            freed += e.n_pages
            self.cached_pages -= e.n_pages
            self._idle_pages -= e.n_pages
