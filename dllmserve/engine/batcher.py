"""Which requests run: waiting and running, FIFO admission by slots, token budget and cache
pages, abort, and the update after an iteration (docs/design.md §6).

Model-free and torch-free: tests drive it with plain requests.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from dllmserve.engine.block_request import BlockRequest
from dllmserve.engine.page_pool import PagePool
from dllmserve.engine.prefix_cache import Entry, PrefixCache
from dllmserve.engine.request import Request, StepResult


class Batcher:
    def __init__(
        self,
        pool: PagePool,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.pool = pool
        self.prefix = prefix_cache  # block-diffusion prompts' shared blocks (prefix_cache.py)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        self.reserved_tokens = 0  # tokens_per_iteration of the running requests

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has(self, request_id: str) -> bool:
        """Whether the request is waiting or running."""
        return request_id in self.running or any(r.request_id == request_id for r in self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> bool:
        """Drop a request now; its pages go back to the pool at once."""
        req = self.running.pop(request_id, None)
        if req is not None:
            self._release(req)
            return True
        for r in self.waiting:
            if r.request_id == request_id:
                self.waiting.remove(r)
                return True
        return False

    def next_fits(self) -> bool:
        """The first waiting request would be admitted now: a slot, its tokens, its pages."""
        if not self.waiting or len(self.running) >= self.max_num_seqs:
            return False
        req = self.waiting[0]
        hits = self._hits(req)
        free = self.pool.num_free + (self.prefix.evictable_pages(hits) if self.prefix else 0)
        return (
            self.reserved_tokens + req.spec.tokens_per_iteration <= self.max_num_batched_tokens
            and req.spec.cache_pages - _pages(hits) <= free
        )

    def admit(self, now: float | None = None) -> None:
        """FIFO admission while the first waiting request fits; it reserves all its pages."""
        now = time.monotonic() if now is None else now
        while self.next_fits():
            req = self.waiting.popleft()
            spec = req.spec
            if spec.pages_per_layer:
                self._reserve_pages(req)
            self.reserved_tokens += spec.tokens_per_iteration
            req.admit_time = now
            self.running[req.request_id] = req

    def update(
        self, reqs: list[Request], x0: np.ndarray, commit: np.ndarray, now: float
    ) -> list[tuple[Request, StepResult]]:
        """Apply an iteration's results (x0 / commit: [requests, block width]) to the requests
        still running (those aborted meanwhile are skipped); finished ones leave."""
        out = []
        for i, req in enumerate(reqs):
            if self.running.get(req.request_id) is not req:
                continue
            out.append((req, req.commit_step(x0[i], commit[i], now)))
            if self._cacheable(req) and not req.prefix_adopted:
                req.adopt_prefix(self.prefix)
            if req.finished:
                del self.running[req.request_id]
                self._release(req)
        return out

    def _cacheable(self, req: Request) -> bool:
        """A block-diffusion request whose blocks fill whole pages (prefix caching on)."""
        return (
            self.prefix is not None
            and isinstance(req, BlockRequest)
            and req.spec.block_length % self.prefix.page_size == 0
        )

    def _hits(self, req: Request) -> list[Entry]:
        return self.prefix.match(req.prefix_keys) if self._cacheable(req) else []

    def _reserve_pages(self, req: Request) -> None:
        """Every page the request can need: its cached prompt blocks' shared pages, then fresh
        ones, evicting unreferenced cached blocks when the pool is short."""
        hits = self._hits(req)
        if self._cacheable(req):
            self.prefix.acquire(hits, len(req.prefix_keys))
        per_block = req.spec.block_length // self.prefix.page_size if hits else 0
        fresh = [n - len(hits) * per_block for n in req.spec.pages_per_layer]
        short = req.lanes * sum(fresh) - self.pool.num_free
        if short > 0 and self.prefix is not None:
            self.prefix.evict(short)
        lanes = []
        for _ in range(req.lanes):
            shared = [[p for e in hits for p in e.pages[layer]] for layer in range(len(fresh))]
            lanes.append([s + self.pool.allocate(n) for s, n in zip(shared, fresh, strict=True)])
        req.set_pages(lanes)
        if self._cacheable(req):
            req.use_cached_prefix(hits)

    def _release(self, req: Request) -> None:
        entries = getattr(req, "prefix_entries", [])
        shared = {p for e in entries for layer in e.pages for p in layer}
        if entries:
            self.prefix.release(entries)
        for lane in req.pages:
            for pages in lane:
                self.pool.free([p for p in pages if p not in shared])
        req.set_pages([])
        self.reserved_tokens -= req.spec.tokens_per_iteration


def _pages(entries: list[Entry]) -> int:
    return sum(len(layer) for e in entries for layer in e.pages)
