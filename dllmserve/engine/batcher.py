"""Which requests run: waiting and running, FIFO admission by slots, token budget and cache
pages, abort, and the update after an iteration (docs/design.md §6).

Model-free and torch-free: tests drive it with plain requests.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from dllmserve.engine.page_pool import PagePool
from dllmserve.engine.request import Request, StepResult


class Batcher:
    def __init__(self, pool: PagePool, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.pool = pool
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
        spec = self.waiting[0].spec
        return (
            self.reserved_tokens + spec.tokens_per_iteration <= self.max_num_batched_tokens
            and spec.cache_pages <= self.pool.num_free
        )

    def admit(self, now: float | None = None) -> None:
        """FIFO admission while the first waiting request fits; it reserves all its pages."""
        now = time.monotonic() if now is None else now
        while self.next_fits():
            req = self.waiting.popleft()
            spec = req.spec
            if spec.pages_per_layer:
                per_lane = spec.pages_per_layer
                req.set_pages([[self.pool.allocate(n) for n in per_lane] for _ in range(req.lanes)])
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
            if req.finished:
                del self.running[req.request_id]
                self._release(req)
        return out

    def _release(self, req: Request) -> None:
        for lane in req.pages:
            for pages in lane:
                self.pool.free(pages)
        req.set_pages([])
        self.reserved_tokens -= req.spec.tokens_per_iteration
