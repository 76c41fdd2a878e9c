"""CUDA graphs for steady-state iterations, where every running lane is in REUSE.

Such an iteration has a fixed shape once the lane count is padded to a bucket: every lane
forwards one window of W tokens against its kept K/V. Replaying a captured forward removes the
launch overhead of ~25 kernels per layer, which at batch 1 costs as much as the forward itself.
Padding lanes forward dummy tokens with no kept entries; their rows are never read.

`capture` is the capture step shared with `dllmserve.engine.dense_graphs` (the batch-1 FULL and
SELECT iterations), whose graphs live in the same memory pool. Graphs of one pool may reuse
each other's scratch memory, so a graph's output is valid only until the next replay of any
graph of the pool: the engine reads it (LM head rows) before launching the next iteration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from dllmserve.engine.attention import BatchAttention
from dllmserve.engine.batch import IterationBatch
from dllmserve.models.transformer import DiffusionTransformer

LANE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)

log = logging.getLogger(__name__)


def _bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= n), None)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def capture(
    graph: torch.cuda.CUDAGraph,
    mempool: tuple,
    forward: Callable[[], torch.Tensor],
    what: str,
) -> torch.Tensor:
    """Capture `forward()` (which reads only static buffers) into `graph`; returns its output,
    which every replay rewrites in place.

    A first run on a side stream compiles the Triton kernels outside the capture (a compile
    inside it would fail) and is otherwise an ordinary forward: its writes (a SELECT's page
    stores) are the ones the first replay repeats. Each capture is logged with its time
    (`what` names the graph): it holds up the worker's iteration, so a stall in serving can be
    matched to it.
    """
    start = time.perf_counter()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph, pool=mempool):
        out = forward()
    log.info("captured a CUDA graph (%s) in %.0f ms", what, 1000 * (time.perf_counter() - start))
    return out


class _Graph:
    def __init__(self, lanes: int, window: int, pages: int, n_layers: int, dev: torch.device):
        t = lanes * window
        self.input_ids = torch.zeros(t, dtype=torch.long, device=dev)
        self.positions = torch.zeros(t, dtype=torch.long, device=dev)
        self.kept_len = torch.zeros((n_layers, lanes), dtype=torch.int32, device=dev)
        self.pages = torch.zeros((n_layers, lanes, pages), dtype=torch.int32, device=dev)
        self.cu = torch.arange(0, t + 1, window, dtype=torch.int32, device=dev)
        self.graph = torch.cuda.CUDAGraph()
        self.hidden: torch.Tensor | None = None


class ReuseGraphs:
    """Captures lazily, one graph per (lane bucket, window, page-table width) key."""

    def __init__(self, model: DiffusionTransformer, max_lanes: int) -> None:
        self.model = model
        self.buckets = tuple(b for b in LANE_BUCKETS if b < max_lanes) + (
            _bucket(max_lanes, LANE_BUCKETS) or max_lanes,
        )
        self.graphs: dict[tuple[int, int, int], _Graph] = {}
        self.mempool = torch.cuda.graph_pool_handle()

    def key(self, batch: IterationBatch) -> tuple[int, int, int] | None:
        """The graph key of a batch, or None when it is not a uniform all-REUSE batch."""
        a = batch.attention
        if a.n_dense_tokens or a.n_reuse == 0 or batch.reuse_window is None:
            return None
        lanes = _bucket(a.n_reuse, self.buckets)
        if lanes is None:
            return None
        return lanes, batch.reuse_window, _pow2(a.reuse_pages.shape[-1])

    def forward(self, batch: IterationBatch, key: tuple[int, int, int]) -> torch.Tensor:
        g = self.graphs.get(key)
        if g is None:
            g = self._capture(key, batch.attention)
        a = batch.attention
        n, t, w = a.n_reuse, batch.input_ids.numel(), a.reuse_pages.shape[-1]
        g.input_ids[:t].copy_(batch.input_ids)
        g.positions[:t].copy_(batch.positions)
        g.kept_len.zero_()
        g.kept_len[:, :n].copy_(a.kept_len)
        g.pages[:, :n, :w].copy_(a.reuse_pages)
        g.graph.replay()
        return g.hidden[:t]

    def _capture(self, key: tuple[int, int, int], like: BatchAttention) -> _Graph:
        lanes, window, pages = key
        dev = self.model.device
        g = _Graph(lanes, window, pages, self.model.cfg.n_layers, dev)
        attention = replace(
            like,
            n_reuse=lanes,
            cu_reuse=g.cu,
            max_reuse=window,
            kept_len=g.kept_len,
            reuse_pages=g.pages,
        )
        g.hidden = capture(
            g.graph,
            self.mempool,
            lambda: self.model.forward(g.input_ids, g.positions, attention),
            f"REUSE, {lanes} lanes, window {window}, {pages} pages",
        )
        self.graphs[key] = g
        return g
