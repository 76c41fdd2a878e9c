"""CUDA graphs for steady-state iterations, where every running lane is in REUSE.

Such an iteration has a fixed shape once the lane count is padded to a bucket: every lane
forwards one window of W tokens against its kept K/V, and replays a forward captured by
`cuda_graphs.capture`. Padding lanes forward dummy tokens with no kept entries; their rows are
never read.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dllmserve.engine.attention import BatchAttention
from dllmserve.engine.batch import IterationBatch
from dllmserve.engine.cuda_graphs import capture, lane_buckets, next_pow2, smallest_bucket
from dllmserve.models.transformer import DiffusionTransformer


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
        self.buckets = lane_buckets(max_lanes)
        self.graphs: dict[tuple[int, int, int], _Graph] = {}
        self.mempool = torch.cuda.graph_pool_handle()

    def key(self, batch: IterationBatch) -> tuple[int, int, int] | None:
        """The graph key of a batch, or None when it is not a uniform all-REUSE batch."""
        a = batch.attention
        if a.n_dense_tokens or a.n_reuse == 0 or batch.reuse_window is None:
            return None
        lanes = smallest_bucket(a.n_reuse, self.buckets)
        if lanes is None:
            return None
        return lanes, batch.reuse_window, next_pow2(a.reuse_pages.shape[-1])

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
