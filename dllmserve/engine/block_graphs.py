"""CUDA graphs for block-diffusion steps (docs/design.md §15): every step whose lanes are all B
tokens, the steps that store a finished block's K/V included.

Every lane stores its K/V (`BlockAttention`), so a step's forward depends only on its lane
count, B and the page-table width: a request's first step after a prefix-cache hit (the
uncached prompt blocks and the first denoised block) and the first step of each later block
(the block just finished and the new one) replay a graph like any other step, instead of
launching ~50 kernels a layer from Python. The key is (lane bucket, B, page-table width rounded
up to a power of two), as `ReuseGraphs`' is; padding lanes attend to nothing (kept length 0)
and store their K/V at the last real row's entry, which belongs to a block still being denoised
(its K/V is rewritten by its final forward before anyone reads it), so they touch no entry that
is read. A key is captured on its first use, with that iteration's own inputs loaded, so the
capture's warm-up run stores exactly what a replay would; `capture_idle` captures the keys of a
request alone (one lane, or two in a step that stores a block) at every page-table width before
any traffic, so that a request's first step after a prefix-cache hit does not wait on a capture.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from dllmserve.engine.block_attention import BlockAttention
from dllmserve.engine.block_batch import BlockIterationBatch, lanes_attention
from dllmserve.engine.cuda_graphs import capture, lane_buckets, next_pow2, smallest_bucket
from dllmserve.engine.kv_cache import KVCache
from dllmserve.models.transformer import DiffusionTransformer


class _Graph:
    """The static inputs of one key; `fill` loads an iteration's tensors into them."""

    def __init__(self, lanes: int, width: int, pages: int, n_layers: int, dev: torch.device):
        t = lanes * width
        self.input_ids = torch.zeros(t, dtype=torch.long, device=dev)
        self.positions = torch.zeros(t, dtype=torch.long, device=dev)
        self.kept_len = torch.zeros((n_layers, lanes), dtype=torch.int32, device=dev)
        self.pages = torch.zeros((n_layers, lanes, pages), dtype=torch.int32, device=dev)
        self.write_slots = torch.zeros((n_layers, t), dtype=torch.long, device=dev)
        self.cu = torch.arange(0, t + 1, width, dtype=torch.int32, device=dev)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.hidden: torch.Tensor | None = None
        self._loaded: tuple[torch.Tensor, ...] = ()  # the index tensors the buffers hold now

    def fill(self, batch: BlockIterationBatch) -> None:
        """Copy the iteration's inputs in (on the current stream); padding rows store at the
        last real row's entry. A refreshed or chained step keeps its predecessor's index
        tensors (the same objects, never written in place): then only its tokens are copied."""
        a = batch.attention
        n, t, w = a.n_reuse, batch.input_ids.numel(), a.reuse_pages.shape[-1]
        self.input_ids[:t].copy_(batch.input_ids)
        indices = (batch.positions, a.kept_len, a.reuse_pages, a.write_slots)
        if self._loaded and all(x is y for x, y in zip(indices, self._loaded, strict=True)):
            return
        self._loaded = indices  # held, so no other tensor can take their identity
        self.positions[:t].copy_(batch.positions)
        self.kept_len.zero_()
        self.kept_len[:, :n].copy_(a.kept_len)
        self.pages[:, :n, :w].copy_(a.reuse_pages)
        self.write_slots[:, :t].copy_(a.write_slots)
        self.write_slots[:, t:].copy_(a.write_slots[:, t - 1 :])


class BlockGraphs:
    """Captures lazily, one graph per (lane bucket, B, page-table width) key.

    `captures` and `replays` count what happened (tests and benchmarks check that the steps
    which store K/V replay graphs too)."""

    def __init__(self, model: DiffusionTransformer, max_lanes: int, mempool: tuple) -> None:
        self.model = model
        self.buckets = lane_buckets(max_lanes)
        self.mempool = mempool
        self.graphs: dict[tuple[int, int, int], _Graph] = {}
        self.captures = 0
        self.replays = 0
        # False: steps that store a finished block's K/V run eagerly, as before these graphs
        # (benchmarks/prefix_cache.py --compare-eager-store-steps measures the difference)
        self.graph_store_steps = True

    def key(self, batch: object) -> tuple[int, int, int] | None:
        """The graph key of a block-diffusion batch of uniform lanes, else None."""
        if not isinstance(batch, BlockIterationBatch) or batch.lane_width is None:
            return None
        if batch.stores_blocks and not self.graph_store_steps:
            return None
        lanes = smallest_bucket(batch.attention.n_reuse, self.buckets)
        if lanes is None:  # a first step of many prompt blocks: compute-bound, run eagerly
            return None
        return lanes, batch.lane_width, next_pow2(batch.attention.reuse_pages.shape[-1])

    def forward(self, batch: BlockIterationBatch, key: tuple[int, int, int]) -> torch.Tensor:
        """The final hidden states [T, d], valid until the next replay of the memory pool."""
        g = self.graphs.get(key)
        if g is None:
            g = self._new(key)
            g.fill(batch)  # the capture's warm-up run stores this iteration's own K/V
            self._capture(key, g, batch.attention)
        else:
            g.fill(batch)
        g.graph.replay()
        self.replays += 1
        return g.hidden[: batch.input_ids.numel()]

    def capture_idle(self, cache: KVCache, width: int, max_pages: int) -> None:
        """Capture the keys of one and two lanes of `width` at every page-table width up to
        `max_pages`' power of two. Only while no page is in use: the captures' forwards store
        their dummy K/V at pages 0, 1, ... (a padding lane's rule would need a real row)."""
        cfg = self.model.cfg
        for n in sorted(
            {smallest_bucket(1, self.buckets), smallest_bucket(2, self.buckets)} - {None}
        ):
            for p in (1 << i for i in range(next_pow2(max_pages).bit_length())):
                key = (n, width, p)
                if key in self.graphs:
                    continue
                g = self._new(key)
                entries = cache.k.shape[0] * cache.k.shape[1]
                g.write_slots.copy_(torch.arange(n * width, device=g.write_slots.device) % entries)
                tensors = {"cu": g.cu, "kept_len": g.kept_len, "pages": g.pages,
                           "write_slots": g.write_slots}  # fmt: skip
                self._capture(
                    key, g, lanes_attention(tensors, cache, cfg.head_dim, cfg.n_layers, width)
                )

    def _new(self, key: tuple[int, int, int]) -> _Graph:
        lanes, width, pages = key
        return _Graph(lanes, width, pages, self.model.cfg.n_layers, self.model.device)

    def _capture(self, key: tuple[int, int, int], g: _Graph, like: BlockAttention) -> None:
        """Capture the forward of `g`'s static inputs (already loaded) into a new graph."""
        lanes, width, pages = key
        g.graph = torch.cuda.CUDAGraph()
        attention = replace(
            like,
            n_reuse=lanes,
            cu_reuse=g.cu,
            max_reuse=width,
            kept_len=g.kept_len,
            reuse_pages=g.pages,
            write_slots=g.write_slots,
        )
        g.hidden = capture(
            g.graph,
            self.mempool,
            lambda: self.model.forward(g.input_ids, g.positions, attention),
            f"block step, {lanes} lanes of {width}, {pages} pages",
        )
        self.graphs[key] = g
        self.captures += 1
